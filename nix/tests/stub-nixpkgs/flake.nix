# The stub nixpkgs as a flake, to stand in for the nixpkgs input:
#   nix flake check --no-build --override-input nixpkgs path:DIR
# where DIR is a copy of this directory with nixpkgs' lib at DIR/lib
# (scripts/check-nix.sh makes it; the lib is another project's and is never
# committed here).
{
  description = "stub nixpkgs for rocm-llm's checks: nixpkgs' lib and a stub package set";

  outputs =
    { self }:
    {
      lib = import ./lib;
    };
}
