package bmc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Credentials log in to a BMC. Printing, logging or marshalling them
// shows the user only.
type Credentials struct {
	User, Password string
}

const redacted = "[redacted]"

func (c Credentials) String() string { return "user=" + c.User + " password=" + redacted }
func (c Credentials) GoString() string {
	return "bmc.Credentials{User:" + fmt.Sprintf("%q", c.User) + ", Password:" + redacted + "}"
}

// LogValue implements slog.LogValuer.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", c.User), slog.String("password", redacted))
}

// MarshalJSON redacts the password; SaveCredentials is the only writer of it.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		User     string `json:"user"`
		Password string `json:"password"`
	}{c.User, redacted})
}

// maxPasswordFile bounds what ReadCredentials reads: a password, not a disk image.
const maxPasswordFile = 4096

// ReadCredentials takes the user from the command line and the password from
// a file (--bmc-password-file), so the password is never on a command line.
// One trailing newline is dropped; the file's contents are never echoed.
func ReadCredentials(user, passwordFile string) (Credentials, error) {
	if user == "" {
		return Credentials{}, errors.New("bmc credentials: no user; give --bmc-user")
	}
	if passwordFile == "" {
		return Credentials{}, errors.New("bmc credentials: no password file; give --bmc-password-file")
	}
	f, err := os.Open(passwordFile)
	if err != nil {
		return Credentials{}, fmt.Errorf("bmc credentials: %w", err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return Credentials{}, fmt.Errorf("bmc credentials: reading %s: %w", passwordFile, err)
	}
	if len(buf) > maxPasswordFile {
		return Credentials{}, fmt.Errorf("bmc credentials: %s is longer than %d bytes; it should hold only the password", passwordFile, maxPasswordFile)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(buf), "\n"), "\r")
	if pw == "" {
		return Credentials{}, fmt.Errorf("bmc credentials: %s is empty", passwordFile)
	}
	if strings.ContainsAny(pw, "\n\x00") {
		return Credentials{}, fmt.Errorf("bmc credentials: %s holds more than one line; it should hold only the password", passwordFile)
	}
	return Credentials{User: user, Password: pw}, nil
}

// credentialsDir is where SaveCredentials keeps credential files, under the
// data directory.
const credentialsDir = "bmc"

// ids that name credential files: machine ids (12 hex digits) and the like.
var credIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

type credFile struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// SaveCredentials writes cred to <dataDir>/bmc/<id>.json, mode 0600 in a
// directory of mode 0700, atomically (a reader sees the old file or the new,
// never half of one). It returns the ref that events carry instead of the
// credentials ("bmc/<id>.json", relative to the data directory).
func SaveCredentials(dataDir, id string, cred Credentials) (ref string, err error) {
	if !credIDPattern.MatchString(id) || strings.Contains(id, "..") {
		return "", fmt.Errorf("bmc credentials: bad id %q (letters, digits, '_', '-', '.')", id)
	}
	if cred.User == "" || cred.Password == "" {
		return "", errors.New("bmc credentials: user and password are required")
	}
	dir := filepath.Join(dataDir, credentialsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone.
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	data, err := json.Marshal(credFile{User: cred.User, Password: cred.Password})
	if err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+id+".*.tmp") // CreateTemp makes it 0600
	if err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	if _, err = tmp.Write(append(data, '\n')); err != nil {
		return "", fmt.Errorf("bmc credentials: writing %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	ref = credentialsDir + "/" + id + ".json"
	if err = os.Rename(tmp.Name(), filepath.Join(dataDir, filepath.FromSlash(ref))); err != nil {
		return "", fmt.Errorf("bmc credentials: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil { // make the rename durable
		_ = d.Sync()
		d.Close()
	}
	return ref, nil
}

// LoadCredentials reads the credentials a ref from SaveCredentials names. It
// refuses refs outside <dataDir>/bmc and files readable by group or others.
func LoadCredentials(dataDir, ref string) (Credentials, error) {
	id, ok := strings.CutPrefix(ref, credentialsDir+"/")
	if ok {
		id, ok = strings.CutSuffix(id, ".json")
	}
	if !ok || !credIDPattern.MatchString(id) || strings.Contains(id, "..") {
		return Credentials{}, fmt.Errorf("bmc credentials: bad ref %q (want bmc/<id>.json)", ref)
	}
	path := filepath.Join(dataDir, credentialsDir, id+".json")
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Credentials{}, fmt.Errorf("bmc credentials: %s: no such file; enroll the machine again with --bmc-password-file", path)
		}
		return Credentials{}, fmt.Errorf("bmc credentials: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Credentials{}, fmt.Errorf("bmc credentials: %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return Credentials{}, fmt.Errorf("bmc credentials: %s has mode %v; it must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Credentials{}, fmt.Errorf("bmc credentials: %w", err)
	}
	var cf credFile
	if err := json.Unmarshal(data, &cf); err != nil || cf.User == "" || cf.Password == "" {
		// The decoder's message could quote the file; say only where.
		return Credentials{}, fmt.Errorf("bmc credentials: %s is not a credentials file (want {\"user\":…,\"password\":…})", path)
	}
	return Credentials{User: cf.User, Password: cf.Password}, nil
}
