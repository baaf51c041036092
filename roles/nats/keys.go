package nats

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/roles"
)

// The files of a keys directory. Seeds and the route password are secrets:
// mode 0600 in a 0700 directory, created once, never logged.
const (
	fileOperator   = "operator.nk"        // operator identity seed: signs account JWTs
	fileSysAccount = "system-account.nk"  // system account seed: signs mdc's $SYS user
	fileAccount    = "account.nk"         // the MDC account's identity seed
	fileSigning    = "account-signing.nk" // the MDC account's signing key: signs user JWTs
	fileRoute      = "route.password"     // cluster route password
	fileState      = "users.json"         // user keys minted per machine, and revocations
)

// RouteUser is the user servers present on cluster routes.
const RouteUser = "mdc-route"

// ErrBadNkey is wrapped when a node sends something that is not a public
// user nkey.
var ErrBadNkey = fmt.Errorf("%w: not a NATS user public key", roles.ErrBadReport)

// Keys is mdc's NATS trust chain: an operator, the system account, the MDC
// account all machines and mdc itself use, and the account's signing key
// that issues user JWTs. It also remembers which user keys it issued for
// which machine, so that retiring a machine can revoke them.
type Keys struct {
	dir string

	operator, sysAccount, account, signing nkeys.KeyPair
	operatorPub, sysPub, accountPub        string
	routePassword                          string

	operatorJWT, sysAccountJWT string

	mu    sync.Mutex
	state keyState
}

// keyState is what users.json holds.
type keyState struct {
	// Users are the public user keys issued per machine.
	Users map[machine.ID][]string `json:"users"`
	// Revoked holds, per user key, the Unix time JWTs issued up to are refused.
	Revoked map[string]int64 `json:"revoked"`
}

// OpenKeys loads the trust chain from dir, creating what is missing. Seed
// files must not be readable by group or others.
func OpenKeys(dir string) (*Keys, error) {
	if dir == "" {
		return nil, errors.New("nats keys: no directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats keys: %w", err)
	}
	k := &Keys{dir: dir}
	var err error
	if k.operator, err = loadOrCreateSeed(dir, fileOperator, nkeys.CreateOperator, nkeys.PrefixByteOperator); err != nil {
		return nil, err
	}
	if k.sysAccount, err = loadOrCreateSeed(dir, fileSysAccount, nkeys.CreateAccount, nkeys.PrefixByteAccount); err != nil {
		return nil, err
	}
	if k.account, err = loadOrCreateSeed(dir, fileAccount, nkeys.CreateAccount, nkeys.PrefixByteAccount); err != nil {
		return nil, err
	}
	if k.signing, err = loadOrCreateSeed(dir, fileSigning, nkeys.CreateAccount, nkeys.PrefixByteAccount); err != nil {
		return nil, err
	}
	pw, err := loadOrCreateSecret(dir, fileRoute, func() ([]byte, error) {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		return []byte(hex.EncodeToString(b)), nil
	})
	if err != nil {
		return nil, err
	}
	k.routePassword = string(pw)
	k.operatorPub, _ = k.operator.PublicKey()
	k.sysPub, _ = k.sysAccount.PublicKey()
	k.accountPub, _ = k.account.PublicKey()

	if err := k.loadState(); err != nil {
		return nil, err
	}
	oc := jwt.NewOperatorClaims(k.operatorPub)
	oc.Name = "mdc"
	oc.SystemAccount = k.sysPub
	if k.operatorJWT, err = oc.Encode(k.operator); err != nil {
		return nil, fmt.Errorf("nats keys: operator JWT: %w", err)
	}
	sc := jwt.NewAccountClaims(k.sysPub)
	sc.Name = "SYS"
	if k.sysAccountJWT, err = sc.Encode(k.operator); err != nil {
		return nil, fmt.Errorf("nats keys: system account JWT: %w", err)
	}
	return k, nil
}

// OperatorPublicKey is the operator's public key, the root servers trust.
func (k *Keys) OperatorPublicKey() string { return k.operatorPub }

// AccountPublicKey is the MDC account's public key.
func (k *Keys) AccountPublicKey() string { return k.accountPub }

// SystemAccountPublicKey is the system account's public key.
func (k *Keys) SystemAccountPublicKey() string { return k.sysPub }

// OperatorJWT is the self-signed operator JWT servers are configured with.
func (k *Keys) OperatorJWT() string { return k.operatorJWT }

// SystemAccountJWT is the system account's JWT.
func (k *Keys) SystemAccountJWT() string { return k.sysAccountJWT }

// AccountJWT is the MDC account's current JWT, with its revocations.
func (k *Keys) AccountJWT() (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.accountJWTLocked()
}

func (k *Keys) accountJWTLocked() (string, error) {
	ac := jwt.NewAccountClaims(k.accountPub)
	ac.Name = "MDC"
	signingPub, _ := k.signing.PublicKey()
	ac.SigningKeys.Add(signingPub)
	// JetStream is off for an account unless its JWT grants it.
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit,
		Streams: jwt.NoLimit, Consumer: jwt.NoLimit, MaxAckPending: jwt.NoLimit,
	}
	for pub, at := range k.state.Revoked {
		ac.RevokeAt(pub, time.Unix(at, 0))
	}
	s, err := ac.Encode(k.operator)
	if err != nil {
		return "", fmt.Errorf("nats keys: account JWT: %w", err)
	}
	return s, nil
}

// MachineSubjects are what a machine's user may use: publish its own events,
// receive its commands and the replies to its own requests (clients set
// nats.CustomInboxPrefix(Inbox)).
type MachineSubjects struct {
	Publish  string `json:"publish"`      // mdc.machine.<id>.>
	Commands string `json:"commands"`     // mdc.cmd.<id>.>
	Inbox    string `json:"inbox_prefix"` // _INBOX.<id>: replies arrive under it
}

// SubjectsFor returns machine id's subjects.
func SubjectsFor(id machine.ID) MachineSubjects {
	return MachineSubjects{
		Publish:  "mdc.machine." + string(id) + ".>",
		Commands: "mdc.cmd." + string(id) + ".>",
		Inbox:    "_INBOX." + string(id),
	}
}

// MachineCredentials mints, for machine id of any role, a user JWT for the
// public user nkey userPub (the seed stays on the node). The user may publish
// only mdc.machine.<id>.> (and one reply to each command it receives), and
// subscribe only to mdc.cmd.<id>.> and its inbox _INBOX.<id>.>.
func (k *Keys) MachineCredentials(id machine.ID, userPub string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	if err := CheckUserKey(userPub); err != nil {
		return "", err
	}
	s := SubjectsFor(id)
	uc := jwt.NewUserClaims(userPub)
	uc.Name = "machine-" + string(id)
	uc.IssuerAccount = k.accountPub
	uc.Pub.Allow.Add(s.Publish)
	uc.Sub.Allow.Add(s.Commands, s.Inbox+".>")
	// Replying to a command is one message to the requester's reply subject.
	uc.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}

	k.mu.Lock()
	defer k.mu.Unlock()
	if !slices.Contains(k.state.Users[id], userPub) {
		k.state.Users[id] = append(k.state.Users[id], userPub)
		if err := k.saveStateLocked(); err != nil {
			k.state.Users[id] = k.state.Users[id][:len(k.state.Users[id])-1]
			return "", err
		}
	}
	t, err := uc.Encode(k.signing)
	if err != nil {
		return "", fmt.Errorf("nats: user JWT for %s: %w", id, err)
	}
	return t, nil
}

// ServiceCredentials mints a user of the MDC account without limits, for
// mdc itself (the event log). The key is new at each call and lives only in
// memory: the seed goes to nats.UserJWTAndSeed, never to a file or log.
func (k *Keys) ServiceCredentials() (userJWT, seed string, err error) {
	return k.mint(k.signing, k.accountPub, "mdc")
}

// systemCredentials mints a $SYS user: mdc pushes account updates and asks
// servers for their routes with it.
func (k *Keys) systemCredentials() (userJWT, seed string, err error) {
	return k.mint(k.sysAccount, "", "mdc-sys")
}

func (k *Keys) mint(signer nkeys.KeyPair, issuerAccount, name string) (string, string, error) {
	u, err := nkeys.CreateUser()
	if err != nil {
		return "", "", err
	}
	pub, _ := u.PublicKey()
	seed, _ := u.Seed()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	uc.IssuerAccount = issuerAccount
	t, err := uc.Encode(signer)
	if err != nil {
		return "", "", fmt.Errorf("nats: %s user JWT: %w", name, err)
	}
	return t, string(seed), nil
}

// revokeMachine revokes every user key issued for id, now, and returns how
// many were newly revoked.
func (k *Keys) revokeMachine(id machine.ID) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now().Unix()
	n := 0
	for _, pub := range k.state.Users[id] {
		if _, done := k.state.Revoked[pub]; !done {
			k.state.Revoked[pub] = now
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := k.saveStateLocked(); err != nil {
		return 0, err
	}
	return n, nil
}

// CheckUserKey says whether s is a public user nkey (U…). The error never
// repeats s: a node that sends its seed by mistake must not see it logged.
func CheckUserKey(s string) error {
	if nkeys.IsValidPublicUserKey(s) {
		return nil
	}
	switch {
	case s == "":
		return fmt.Errorf("%w: the node sent no nkey", ErrBadNkey)
	case s[0] == 'S':
		return fmt.Errorf("%w: the node sent what looks like a seed; send the public key (U…) only, and treat the seed as leaked", ErrBadNkey)
	case nkeys.IsValidPublicKey(s):
		return fmt.Errorf("%w: the node sent a public key of another kind (prefix %q); want a user key (U…)", ErrBadNkey, s[:1])
	default:
		return fmt.Errorf("%w: the node sent %d characters that do not decode as an nkey", ErrBadNkey, len(s))
	}
}

func checkID(id machine.ID) error {
	if p, err := machine.ParseID(string(id)); err != nil || p != id {
		return fmt.Errorf("nats: %q is not a machine id (12 lowercase hex digits)", id)
	}
	return nil
}

func (k *Keys) loadState() error {
	k.state = keyState{Users: map[machine.ID][]string{}, Revoked: map[string]int64{}}
	b, err := readSecretFile(filepath.Join(k.dir, fileState))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &k.state); err != nil {
		return fmt.Errorf("nats keys: %s: %w", fileState, err)
	}
	if k.state.Users == nil {
		k.state.Users = map[machine.ID][]string{}
	}
	if k.state.Revoked == nil {
		k.state.Revoked = map[string]int64{}
	}
	return nil
}

func (k *Keys) saveStateLocked() error {
	b, err := json.MarshalIndent(k.state, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(k.dir, fileState), b)
}

func loadOrCreateSeed(dir, name string, create func() (nkeys.KeyPair, error), want nkeys.PrefixByte) (nkeys.KeyPair, error) {
	seed, err := loadOrCreateSecret(dir, name, func() ([]byte, error) {
		kp, err := create()
		if err != nil {
			return nil, err
		}
		return kp.Seed()
	})
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("nats keys: %s does not hold an nkey seed", filepath.Join(dir, name))
	}
	if pub, _ := kp.PublicKey(); nkeys.Prefix(pub) != want {
		return nil, fmt.Errorf("nats keys: %s holds a seed of the wrong kind", filepath.Join(dir, name))
	}
	return kp, nil
}

// loadOrCreateSecret reads dir/name, or creates it with gen's bytes.
func loadOrCreateSecret(dir, name string, gen func() ([]byte, error)) ([]byte, error) {
	path := filepath.Join(dir, name)
	b, err := readSecretFile(path)
	if err == nil {
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	b, err = gen()
	if err != nil {
		return nil, fmt.Errorf("nats keys: create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("nats keys: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("nats keys: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("nats keys: write %s: %w", path, err)
	}
	return b, nil
}

// readSecretFile refuses a file group or others may read.
func readSecretFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("nats keys: %s has mode %#o; it holds a secret: chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nats keys: %w", err)
	}
	return b, nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("nats keys: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("nats keys: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("nats keys: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("nats keys: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("nats keys: %w", err)
	}
	return nil
}
