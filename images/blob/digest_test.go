package blob

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseDigest(t *testing.T) {
	const hex = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
	want := Sum([]byte("hello\n"))
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{hex, true},
		{"sha256:" + hex, true},
		{strings.ToUpper(hex), false},
		{"sha512:" + hex, false},
		{"sha256:" + hex[:63], false},
		{hex + "0", false},
		{"", false},
		{"sha256:", false},
		{hex[:62] + "g3", false},
		{"../../etc/passwd", false},
	} {
		d, err := ParseDigest(tc.in)
		if tc.ok && (err != nil || d != want) {
			t.Errorf("ParseDigest(%q) = %s, %v; want %s", tc.in, d, err, want)
		}
		if !tc.ok && !errors.Is(err, ErrBadDigest) {
			t.Errorf("ParseDigest(%q) = %s, %v; want ErrBadDigest", tc.in, d, err)
		}
	}
	if want.String() != "sha256:"+hex || want.Path() != "/blobs/sha256/"+hex {
		t.Errorf("String %q, Path %q", want.String(), want.Path())
	}
	var d Digest
	if err := d.UnmarshalText([]byte("sha256:" + hex)); err != nil || d != want {
		t.Errorf("UnmarshalText: %s, %v", d, err)
	}
}

// FuzzParseDigest: digests come from URL paths and API bodies.
func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{
		"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
		"sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
		"sha256:", ":", "md5:abc", "../x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if err != nil {
			if !errors.Is(err, ErrBadDigest) {
				t.Fatalf("error %v is not ErrBadDigest", err)
			}
			return
		}
		// Exactly one spelling per digest in each form.
		if s != d.Hex() && s != d.String() {
			t.Fatalf("ParseDigest(%q) accepted a second spelling of %s", s, d)
		}
		if d2, err := ParseDigest(d.String()); err != nil || d2 != d {
			t.Fatalf("round trip of %s: %s, %v", d, d2, err)
		}
	})
}

// FuzzHandlerPath: every path under /blobs/ gets a clean 2xx/4xx answer,
// and only the stored blob's own path gets its bytes.
func FuzzHandlerPath(f *testing.F) {
	s, err := NewLocal(f.TempDir(), Options{})
	if err != nil {
		f.Fatal(err)
	}
	content := []byte("hello\n")
	d := Sum(content)
	if _, err := s.Put(context.Background(), bytes.NewReader(content), d); err != nil {
		f.Fatal(err)
	}
	h := Handler(s, nil, nil)
	for _, p := range []string{d.Path(), "/blobs/sha256/", "/blobs/sha256/" + strings.ToUpper(d.Hex()),
		"/blobs/md5/00", "/blobs/sha256/%2e%2e/%2e%2e/etc/passwd", "/blobs/sha256/" + d.Hex() + "/x"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		req, err := http.NewRequest("GET", "http://mdc"+p, nil)
		if err != nil || !strings.HasPrefix(req.URL.Path, "/blobs/") {
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("GET %q: %d", p, rec.Code)
		}
		if rec.Code == 200 && (req.URL.Path != d.Path() || !bytes.Equal(rec.Body.Bytes(), content)) {
			t.Fatalf("GET %q (path %q): 200 with %q", p, req.URL.Path, rec.Body.Bytes())
		}
	})
}
