package images

import (
	"context"
	"errors"
	"fmt"
	"io"

	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	"github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"
)

// IPFS is a file's IPFS address and the import settings that produced it:
// the same bytes give another CID under another chunker or layout, so the
// settings travel with the CID.
type IPFS struct {
	CID       string `json:"cid"`
	Chunker   string `json:"chunker"`    // size-262144
	Layout    string `json:"layout"`     // balanced
	MaxLinks  int    `json:"max_links"`  // children per node of the balanced tree
	RawLeaves bool   `json:"raw_leaves"` // leaves are raw blocks, not UnixFS nodes
}

// The pinned settings: what `ipfs add --cid-version=1 --raw-leaves
// --chunker=size-262144` does with kubo's default layout.
const (
	cidChunkSize = 262144
	cidChunker   = "size-262144"
	cidLayout    = "balanced"
	cidMaxLinks  = 174 // boxo's helpers.DefaultLinksPerBlock: 8 KiB / 47 B per link
)

// CIDSettings are the pinned settings, without a CID.
func CIDSettings() IPFS {
	return IPFS{Chunker: cidChunker, Layout: cidLayout, MaxLinks: cidMaxLinks, RawLeaves: true}
}

// ComputeCID reads r to the end and returns its CIDv1 as boxo's UnixFS
// importer builds it with the pinned settings. Blocks are hashed and
// dropped: memory is one chunk plus one path of the tree.
func ComputeCID(ctx context.Context, r io.Reader) (IPFS, error) {
	out := CIDSettings()
	params := helpers.DagBuilderParams{
		Maxlinks:   cidMaxLinks,
		RawLeaves:  true,
		CidBuilder: cid.V1Builder{Codec: cid.DagProtobuf, MhType: mh.SHA2_256},
		Dagserv:    discardDAG{},
	}
	db, err := params.New(chunker.NewSizeSplitter(ctxReader{ctx, r}, cidChunkSize))
	if err != nil {
		return IPFS{}, fmt.Errorf("cid: %w", err)
	}
	root, err := balanced.Layout(db)
	if err != nil {
		return IPFS{}, fmt.Errorf("cid: %w", err)
	}
	out.CID = root.Cid().String()
	return out, nil
}

// discardDAG is the DAG service of `ipfs add --only-hash`: blocks are
// made, hashed and forgotten. The balanced layout never reads back.
type discardDAG struct{}

var errNoBlocks = errors.New("cid: blocks are not kept")

func (discardDAG) Get(context.Context, cid.Cid) (ipld.Node, error) { return nil, errNoBlocks }
func (discardDAG) GetMany(context.Context, []cid.Cid) <-chan *ipld.NodeOption {
	ch := make(chan *ipld.NodeOption)
	close(ch)
	return ch
}
func (discardDAG) Add(context.Context, ipld.Node) error        { return nil }
func (discardDAG) AddMany(context.Context, []ipld.Node) error  { return nil }
func (discardDAG) Remove(context.Context, cid.Cid) error       { return nil }
func (discardDAG) RemoveMany(context.Context, []cid.Cid) error { return nil }

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
