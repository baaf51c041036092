# The Go source of mdc: the repository without nix/ and docs/, so editing
# the flake or the docs does not rebuild the binaries. In a git checkout the
# flake sees only tracked files: `git add` new Go files before `nix build`.
{ lib }:
let
  root = ../..;
in
lib.fileset.toSource {
  inherit root;
  fileset = lib.fileset.difference root (
    lib.fileset.unions [
      (root + "/nix")
      (lib.fileset.maybeMissing (root + "/docs"))
    ]
  );
}
