package ipfs

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/microdc/mdc/machine"
)

// swarmKeyHeader is the first two lines of a libp2p pnet v1 key (what
// kubo reads from <repo>/swarm.key).
const swarmKeyHeader = "/key/swarm/psk/1.0.0/\n/base16/\n"

// loadOrMint returns the secret in path, minting it with mint (0600,
// O_EXCL, so two mdc processes starting at once keep one) when the file
// does not exist. check validates what is read.
func loadOrMint(path string, mint func() ([]byte, error), check func([]byte) error) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		nb, err := mint()
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return loadOrMint(path, mint, check)
		}
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(nb); err != nil {
			f.Close()
			os.Remove(path)
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		return nb, nil
	}
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is mode %04o: a secret must be 0600 (chmod 600 it)", path, st.Mode().Perm())
	}
	if err := check(b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

func mintSwarmKey() ([]byte, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	return []byte(swarmKeyHeader + hex.EncodeToString(k[:]) + "\n"), nil
}

// checkSwarmKey accepts exactly what mintSwarmKey writes (and kubo reads):
// the header and 64 hex digits.
func checkSwarmKey(b []byte) error {
	rest, ok := bytes.CutPrefix(b, []byte(swarmKeyHeader))
	rest = bytes.TrimRight(rest, "\n")
	if !ok || len(rest) != 64 {
		return errors.New("not a swarm key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits)")
	}
	if _, err := hex.DecodeString(string(rest)); err != nil {
		return errors.New("not a swarm key: the key is not hex")
	}
	return nil
}

func mintRPCKey() ([]byte, error) {
	k := make([]byte, 32)
	_, err := rand.Read(k)
	return k, err
}

func checkRPCKey(b []byte) error {
	if len(b) != 32 {
		return errors.New("not an RPC key (32 bytes)")
	}
	return nil
}

// rpcToken derives a machine's kubo RPC bearer token for one use (mdc's
// scoped checks, or the node's own admin access) from the RPC key, so
// nothing per machine is stored and every Configure serves the same token.
func rpcToken(key []byte, use string, id machine.ID) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("mdc-ipfs-rpc\x00" + use + "\x00" + string(id)))
	return hex.EncodeToString(h.Sum(nil))
}

// ensureDir makes the role's data directory, private to mdc.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(filepath.Clean(dir), 0o700)
}
