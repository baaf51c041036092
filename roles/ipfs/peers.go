package ipfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/microdc/mdc/machine"
)

// Peer is a joined node of the swarm, as its join evidence described it
// and Verify confirmed it.
type Peer struct {
	Machine machine.ID `json:"machine"`
	ID      string     `json:"id"`            // libp2p peer id, base58
	Addrs   []string   `json:"addrs"`         // TCP multiaddrs without /p2p
	RPC     string     `json:"rpc,omitempty"` // kubo RPC base URL
}

// Peers holds the joined nodes. The role reads it for every Configure
// and changes it on a verified join and on retire. An implementation
// backed by the event log can replace the file store.
type Peers interface {
	List(ctx context.Context) ([]Peer, error)
	// Put adds or replaces the machine's entry.
	Put(ctx context.Context, p Peer) error
	// Delete removes the machine's entry; a missing one is not an error.
	Delete(ctx context.Context, id machine.ID) error
}

// MemPeers is Peers in memory, optionally saved as JSON to a file after
// every change (so a restarted mdc keeps the swarm it knew).
type MemPeers struct {
	mu    sync.Mutex
	path  string
	peers map[machine.ID]Peer
}

// NewMemPeers returns an empty in-memory store.
func NewMemPeers() *MemPeers { return &MemPeers{peers: make(map[machine.ID]Peer)} }

// OpenFilePeers returns a store saved in path (read now if it exists).
func OpenFilePeers(path string) (*MemPeers, error) {
	s := &MemPeers{path: path, peers: make(map[machine.ID]Peer)}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	var list []Peer
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("ipfs peers %s: %w", path, err)
	}
	for _, p := range list {
		s.peers[p.Machine] = p
	}
	return s, nil
}

// List returns the peers sorted by machine id.
func (s *MemPeers) List(context.Context) ([]Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listLocked(), nil
}

func (s *MemPeers) listLocked() []Peer {
	out := make([]Peer, 0, len(s.peers))
	for _, p := range s.peers {
		p.Addrs = append([]string(nil), p.Addrs...)
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Machine < out[j].Machine })
	return out
}

// Put adds or replaces p.
func (s *MemPeers) Put(_ context.Context, p Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.peers[p.Machine]
	s.peers[p.Machine] = p
	if err := s.saveLocked(); err != nil {
		if had {
			s.peers[p.Machine] = old
		} else {
			delete(s.peers, p.Machine)
		}
		return err
	}
	return nil
}

// Delete removes the machine's peer.
func (s *MemPeers) Delete(_ context.Context, id machine.ID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.peers[id]
	if !had {
		return nil
	}
	delete(s.peers, id)
	if err := s.saveLocked(); err != nil {
		s.peers[id] = old
		return err
	}
	return nil
}

func (s *MemPeers) saveLocked() error {
	if s.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(s.listLocked(), "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".peers-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.path)
}
