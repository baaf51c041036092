// Command mdc provisions the machines of a micro data center: `mdc serve`
// runs the service, the other commands talk to it over its API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is a mistake in how mdc was called: one line, exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "mdc: %s\n", ue.msg)
		return 2
	}
	fmt.Fprintf(stderr, "mdc: %v\n", err)
	return 1
}

const usage = `mdc provisions the machines of a micro data center.

Usage:
  mdc serve    [flags]                 run the service (DHCP, TFTP, HTTP, event log)
  mdc machines list [--state S] [--role R]
  mdc machines show ID
  mdc machines register MAC [--name NAME]
  mdc machines rename ID NAME
  mdc machines assign ID ROLE
  mdc machines reprovision ID
  mdc machines retire ID [--reason TEXT]
  mdc events   [--follow] [--machine ID] [--since SEQ]
  mdc images   import DIR [--name N] [--role R] [--require-signed]
  mdc images   import --kernel F --initrd F [--initrd F…] --cmdline S --name N --role R
  mdc images   list [--role R] | show NAME | delete NAME [--reason TEXT]
  mdc enroll   --bmc URL --bmc-user U --bmc-password-file F [--mac M] [--name N] [--role R] [--wait]
  mdc power    on|off|cycle|soft|status ID
  mdc inventory status | resync          NetBox's lag behind the event log; replay it into NetBox
  mdc roles    list                    the roles, their clusters, their machines by state
  mdc roles    show NAME               a role's settings, members and machines, with each one's join
  mdc version

Client flags (every command but serve):
  --server URL   mdc's API (default http://127.0.0.1:8080; env MDC_SERVER)
  --token T      the admin token (env MDC_TOKEN; default: read <data-dir>/admin.token)
  --data-dir DIR where to find admin.token (default /var/lib/mdc; env MDC_DATA_DIR)
  -o table|json  output format (default table)

Run "mdc serve --help" for the server's flags. Every flag can also be set as
MDC_<FLAG> in the environment (--http-addr: MDC_HTTP_ADDR) or in the --config
YAML file (http-addr: ...); flags win over the environment, the environment
over the file.
`

// run is mdc without the process around it: tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usagef("no command given")
	}
	args = commandFirst(args, commands)
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(ctx, rest, stdout, stderr, getenv)
	case "machines":
		return machinesCmd(ctx, rest, stdout, stderr, getenv)
	case "events":
		return eventsCmd(ctx, rest, stdout, stderr, getenv)
	case "images":
		return imagesCmd(ctx, rest, stdout, stderr, getenv)
	case "enroll":
		return enrollCmd(ctx, rest, stdout, stderr, getenv)
	case "power":
		return powerCmd(ctx, rest, stdout, stderr, getenv)
	case "inventory":
		return inventoryCmd(ctx, rest, stdout, stderr, getenv)
	case "roles":
		return rolesCmd(ctx, rest, stdout, stderr, getenv)
	case "version":
		return versionCmd(ctx, rest, stdout, stderr, getenv)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usagef("unknown command %q (run mdc help)", cmd)
}

var commands = []string{"serve", "machines", "events", "images", "enroll", "power", "inventory", "roles", "version", "help"}

// commandFirst lets flags stand before the command (mdc --server URL
// machines list) by moving the first command word to the front.
func commandFirst(args, commands []string) []string {
	if !strings.HasPrefix(args[0], "-") || args[0] == "-h" || args[0] == "--help" {
		return args
	}
	for i, a := range args {
		if slices.Contains(commands, a) {
			return append(append([]string{a}, args[:i]...), args[i+1:]...)
		}
	}
	return args
}
