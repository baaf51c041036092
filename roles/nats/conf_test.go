package nats

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

func TestRenderConfGolden(t *testing.T) {
	got := renderConf(confData{
		Machine:       "525400123456",
		ServerName:    "nats-1",
		Host:          "0.0.0.0",
		MonitorHost:   "127.0.0.1",
		ClientPort:    4222,
		ClusterPort:   6222,
		HTTPPort:      8222,
		StoreDir:      "/var/lib/nats/jetstream",
		ResolverDir:   "/var/lib/nats/jwt",
		Cluster:       "mdc",
		RouteUser:     RouteUser,
		RoutePassword: "0123abcd",
		Routes:        []string{"nats-route://mdc-route:0123abcd@127.0.0.1:6222", "nats-route://mdc-route:0123abcd@10.0.0.2:6222"},
		OperatorJWT:   "eyJOPERATOR.JWT",
		SysPub:        "ASYS",
		Preload:       [][2]string{{"ASYS", "eyJSYS.JWT"}, {"AMDC", "eyJMDC.JWT"}},
	})
	path := filepath.Join("testdata", "nats-server.conf.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
}
