# A small YAML writer for the spec rocm-llm reads: block mappings and
# sequences, every string double-quoted (JSON string syntax is valid YAML), so
# the file the module writes is readable and pleasant to edit by hand.
# Needs only nixpkgs' `lib`, so it is exercised by scripts/check-nix.sh.
{ lib }:
let
  inherit (lib)
    concatLists
    concatStringsSep
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isPath
    isString
    mapAttrsToList
    ;

  # YAML 1.1 reads these as booleans or null when bare
  ambiguous = [
    "y"
    "Y"
    "yes"
    "Yes"
    "YES"
    "n"
    "N"
    "no"
    "No"
    "NO"
    "true"
    "True"
    "TRUE"
    "false"
    "False"
    "FALSE"
    "on"
    "On"
    "ON"
    "off"
    "Off"
    "OFF"
    "null"
    "Null"
    "NULL"
  ];

  key =
    k:
    if builtins.match "[A-Za-z_][A-Za-z0-9_.-]*" k != null && !(builtins.elem k ambiguous) then
      k
    else
      builtins.toJSON k;

  scalar =
    v:
    if v == null then
      "null"
    else if isBool v then
      (if v then "true" else "false")
    else if isInt v || isFloat v then
      builtins.toJSON v
    else if isString v || isPath v then
      builtins.toJSON (toString v)
    else
      throw "rocm-llm: cannot write a ${builtins.typeOf v} into the spec";

  # a value that takes lines of its own
  nested = v: (isAttrs v && v != { }) || (isList v && v != [ ]);

  inline =
    v:
    if isAttrs v then
      "{}"
    else if isList v then
      "[]"
    else
      scalar v;

  # lines of the value at the given indentation
  lines =
    indent: v:
    if isAttrs v then
      concatLists (
        mapAttrsToList (
          k: x:
          if nested x then
            [ "${indent}${key k}:" ] ++ lines "${indent}  " x
          else
            [ "${indent}${key k}: ${inline x}" ]
        ) v
      )
    else if isList v then
      concatLists (
        map (
          x: if nested x then [ "${indent}-" ] ++ lines "${indent}  " x else [ "${indent}- ${inline x}" ]
        ) v
      )
    else
      [ "${indent}${scalar v}" ];
in
{
  # A YAML document for the attribute set `value`, after the comment lines of
  # `header`.
  toYAML =
    {
      header ? [ ],
    }:
    value: concatStringsSep "\n" (map (l: "# ${l}") header ++ lines "" value) + "\n";
}
