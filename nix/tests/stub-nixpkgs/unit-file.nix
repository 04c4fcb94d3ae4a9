# A systemd service unit file from a NixOS `systemd.services.<name>` value, the
# way NixOS writes one: [Unit] from description/after/wants/... and the
# triggers, [Service] from `environment` (Environment="K=V") and
# `serviceConfig` (one `Key=value` line per value, lists repeated, booleans
# as true/false). Used where the real systemd module is absent (the stubbed
# module evaluation), so that systemd-analyze can check what the module
# declares; checks.module-eval reads the real module's text instead.
#
# Also: how switch-to-configuration treats a change from one unit text to
# another (a simplified model of its comparison): "none", "reload" when only
# X-Reload-Triggers differ, else "restart".
{ lib }:
let
  inherit (lib)
    concatMap
    concatStringsSep
    filter
    isList
    mapAttrsToList
    optional
    ;

  value =
    v:
    if v == true then
      "true"
    else if v == false then
      "false"
    else if builtins.isAttrs v && !(v ? outPath) then
      throw "unit-file: a systemd setting cannot be an attribute set"
    else
      toString v;

  lines =
    attrs: concatMap (k: map (v: "${k}=${value v}") (lib.toList attrs.${k})) (builtins.attrNames attrs);

  joined = k: l: optional (l != [ ]) "${k}=${concatStringsSep " " l}";

  render =
    svc:
    let
      unitSection =
        optional ((svc.description or "") != "") "Description=${svc.description}"
        ++ joined "Requires" (svc.requires or [ ])
        ++ joined "Wants" (svc.wants or [ ])
        ++ joined "After" (svc.after or [ ])
        ++ joined "Before" (svc.before or [ ])
        ++ joined "BindsTo" (svc.bindsTo or [ ])
        ++ joined "PartOf" (svc.partOf or [ ])
        ++ optional ((svc.reloadTriggers or [ ]) != [ ]) "X-Reload-Triggers=${toString svc.reloadTriggers}"
        ++ optional (
          (svc.restartTriggers or [ ]) != [ ]
        ) "X-Restart-Triggers=${toString svc.restartTriggers}";
      env = svc.environment or { };
      serviceSection =
        map (n: ''Environment="${n}=${toString env.${n}}"'') (
          filter (n: env.${n} != null) (builtins.attrNames env)
        )
        ++ optional (!(svc.restartIfChanged or true)) "X-RestartIfChanged=false"
        ++ optional (!(svc.stopIfChanged or true)) "X-StopIfChanged=false"
        ++ lines (svc.serviceConfig or { });
    in
    concatStringsSep "\n" (
      [ "[Unit]" ]
      ++ unitSection
      ++ [
        ""
        "[Service]"
      ]
      ++ serviceSection
    )
    + "\n";

  # "[Section]" and "Key=value" lines -> list of "Section/Key=value"
  entries =
    text:
    let
      step =
        acc: line:
        let
          m = builtins.match "[[]([A-Za-z]+)[]]" line;
        in
        if m != null then
          acc // { section = builtins.head m; }
        else if line == "" || lib.hasPrefix "#" line then
          acc
        else
          acc // { out = acc.out ++ [ "${acc.section}/${line}" ]; };
    in
    (builtins.foldl' step {
      section = "";
      out = [ ];
    } (lib.splitString "\n" text)).out;

  isReloadTrigger = e: lib.hasPrefix "Unit/X-Reload-Triggers=" e;
in
{
  inherit render entries;

  switchAction =
    old: new:
    let
      a = entries old;
      b = entries new;
      rest = es: filter (e: !(isReloadTrigger e)) es;
    in
    if a == b then
      "none"
    else if rest a != rest b then
      "restart"
    else
      "reload";
}
