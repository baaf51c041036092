package bmc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const secretPW = "s3cr3t-Pa55word"

func TestCredentialsRedacted(t *testing.T) {
	c := Credentials{User: "admin", Password: secretPW}
	var logBuf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&logBuf, nil), slog.NewTextHandler(&logBuf, nil)} {
		slog.New(h).Info("enroll", "cred", c)
	}
	js, err := json.Marshal(map[string]any{"cred": c})
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"%v": fmt.Sprintf("%v", c), "%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c), "%s": fmt.Sprintf("%s", c),
		"slog": logBuf.String(), "json": string(js),
		"error": (&Error{BMC: "ipmi://h:623", Op: "power on", Kind: AuthFailed, Err: fmt.Errorf("BMC said %s", secretPW), secret: secretPW}).Error(),
	} {
		if strings.Contains(s, secretPW) {
			t.Errorf("%s shows the password: %s", name, s)
		}
		if name != "error" && !strings.Contains(s, "admin") {
			t.Errorf("%s lost the user: %s", name, s)
		}
	}
}

func TestReadCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for content, want := range map[string]string{
		secretPW:          secretPW,
		secretPW + "\n":   secretPW,
		secretPW + "\r\n": secretPW,
		" spaced pw \n":   " spaced pw ",
	} {
		c, err := ReadCredentials("admin", write("pw", content))
		if err != nil || c.Password != want || c.User != "admin" {
			t.Errorf("ReadCredentials(%q) = %q, %v; want %q", content, c.Password, err, want)
		}
	}
	for name, content := range map[string]string{
		"empty":    "",
		"newline":  "\n",
		"twolines": secretPW + "\nmore\n",
		"huge":     strings.Repeat("x", maxPasswordFile+1),
	} {
		_, err := ReadCredentials("admin", write(name, content))
		if err == nil {
			t.Errorf("ReadCredentials(%s) succeeded", name)
		} else if strings.Contains(err.Error(), secretPW) {
			t.Errorf("ReadCredentials(%s) error shows the file: %v", name, err)
		}
	}
	if _, err := ReadCredentials("", write("pw", secretPW)); err == nil {
		t.Error("ReadCredentials without a user succeeded")
	}
	if _, err := ReadCredentials("admin", filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadCredentials of a missing file succeeded")
	}
}

func TestSaveLoadCredentials(t *testing.T) {
	dataDir := t.TempDir()
	cred := Credentials{User: "admin", Password: secretPW}
	ref, err := SaveCredentials(dataDir, "525400123456", cred)
	if err != nil {
		t.Fatal(err)
	}
	if ref != "bmc/525400123456.json" || strings.Contains(ref, secretPW) {
		t.Fatalf("ref = %q", ref)
	}
	fi, err := os.Stat(filepath.Join(dataDir, "bmc", "525400123456.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Join(dataDir, "bmc"))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("credentials directory mode %v, want 0700", di.Mode().Perm())
	}
	got, err := LoadCredentials(dataDir, ref)
	if err != nil || got != cred {
		t.Fatalf("LoadCredentials = %v, %v; want %v", got, err, cred)
	}

	// Overwrite atomically: concurrent readers see the old or the new.
	newCred := Credentials{User: "admin", Password: "n3w-Pa55word"}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				if _, err := SaveCredentials(dataDir, "525400123456", newCred); err != nil {
					t.Error(err)
				}
				return
			}
			if c, err := LoadCredentials(dataDir, ref); err != nil || (c != cred && c != newCred) {
				t.Errorf("LoadCredentials during a save = %v, %v", c, err)
			}
		}()
	}
	wg.Wait()
	entries, _ := os.ReadDir(filepath.Join(dataDir, "bmc"))
	if len(entries) != 1 {
		t.Errorf("the credentials directory holds %d entries, want 1 (no temporary files left)", len(entries))
	}

	// A directory made too open is closed again.
	if err := os.Chmod(filepath.Join(dataDir, "bmc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := SaveCredentials(dataDir, "525400123457", cred); err != nil {
		t.Fatal(err)
	}
	if di, _ := os.Stat(filepath.Join(dataDir, "bmc")); di.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v after save, want 0700", di.Mode().Perm())
	}
}

func TestCredentialsRefusals(t *testing.T) {
	dataDir := t.TempDir()
	cred := Credentials{User: "admin", Password: secretPW}
	for _, id := range []string{"", "../x", "a/b", ".hidden", "..", "x..y", strings.Repeat("a", 200)} {
		if _, err := SaveCredentials(dataDir, id, cred); err == nil {
			t.Errorf("SaveCredentials(id %q) succeeded", id)
		}
	}
	if _, err := SaveCredentials(dataDir, "m1", Credentials{User: "admin"}); err == nil {
		t.Error("SaveCredentials without a password succeeded")
	}
	for _, ref := range []string{"", "bmc/../admin.token", "../bmc/m1.json", "/etc/passwd", "bmc/m1", "bmc/m1.json/x", "other/m1.json"} {
		if _, err := LoadCredentials(dataDir, ref); err == nil {
			t.Errorf("LoadCredentials(ref %q) succeeded", ref)
		}
	}
	ref, err := SaveCredentials(dataDir, "m1", cred)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dataDir, filepath.FromSlash(ref))
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(dataDir, ref); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadCredentials of a world-readable file = %v, want a refusal naming chmod 600", err)
	}
	if err := os.WriteFile(p, []byte(`{"user":"admin","password":`+secretPW), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(dataDir, ref); err == nil || strings.Contains(err.Error(), secretPW) {
		t.Errorf("LoadCredentials of a broken file = %v, want an error without its contents", err)
	}
	if _, err := LoadCredentials(dataDir, "bmc/m2.json"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("LoadCredentials of a missing file = %v", err)
	}
}
