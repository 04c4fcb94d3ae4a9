# The NixOS options services.rocm-llm sets, declared with the types NixOS
# gives them (checked against nixpkgs' nixos/lib/systemd-unit-options.nix,
# systemd-lib.nix and the firewall, etc and system-path modules), and the few
# packages it uses, faked: enough to evaluate modules/rocm-llm.nix with
# nixpkgs' `lib` alone (scripts/check-nix.sh), and to reject what NixOS
# rejects: an unknown unit attribute, a unit name that is not one, a
# non-package on the system PATH, a port out of range, a service Type or
# Restart= value systemd does not have, two different values for one setting.
# The flake's checks.module-eval evaluates the same module in the real NixOS
# module system.
{
  lib,
  # where the fake packages and written scripts are (check-nix.sh points this
  # at a scratch directory and puts stand-in executables there)
  stubStore ? "/nix/store",
}:
let
  inherit (lib) mkOption types;
  unitFile = import ./unit-file.nix { inherit lib; };

  fakePackage = name: path: {
    type = "derivation";
    inherit name;
    outPath = path;
    meta.mainProgram = name;
  };
  fake = hash: name: fakePackage name "${stubStore}/${hash}-${name}";

  # a unit name such as network.target (systemd-lib.nix's unitNameType)
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # a [Service] setting: lists concatenate, other values must agree
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      if builtins.any (d: builtins.isList d.value) defs then
        builtins.concatMap (d: lib.toList d.value) defs
      else
        lib.mergeEqualOption loc defs;
  };

  oneOf =
    key: allowed: cfg:
    !(cfg ? ${key}) || builtins.elem cfg.${key} allowed;
  checkService =
    cfg:
    oneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ] cfg
    && oneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "on-watchdog"
      "always"
    ] cfg;

  units = types.listOf unitName;
  unitList = mkOption {
    type = units;
    default = [ ];
  };

  service = types.submodule {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      wantedBy = unitList;
      requiredBy = unitList;
      wants = unitList;
      requires = unitList;
      after = unitList;
      before = unitList;
      bindsTo = unitList;
      partOf = unitList;
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };
in
{
  pkgs = lib.fix (self: {
    inherit lib;
    callPackage = lib.callPackageWith self;
    # nixpkgs' symlinkJoin keeps neither `name`'s argument form nor
    # `postBuild` among the result's attributes (it removes them before
    # calling runCommand); passthru attributes are on the result
    symlinkJoin =
      args:
      builtins.removeAttrs args [
        "name"
        "postBuild"
        "passthru"
        "paths"
      ]
      // (args.passthru or { })
      // {
        passthru = args.passthru or { };
      }
      // fake "22222222222222222222222222222222" args.name;
    makeWrapper = fake "33333333333333333333333333333333" "make-wrapper";
    # coreutils of the machine that runs the check, so the sync script the
    # module writes can run there
    coreutils = fakePackage "coreutils" "/usr";
    rocm-llm = fake "00000000000000000000000000000000" "rocm-llm-stub";
    rocm-llm-llama-cpp-rocm = fake "11111111111111111111111111111111" "llama-cpp-rocm-stub" // {
      backend = "rocm";
      faKvPairs = [
        "q4_0-q4_0"
        "q8_0-q8_0"
        "f16-f16"
        "bf16-bf16"
      ];
    };
    # nixpkgs' own llama-cpp-vulkan: no passthru.backend, a Vulkan loader
    nixpkgs-llama-cpp-vulkan = fake "66666666666666666666666666666666" "llama-cpp-7000" // {
      buildInputs = [ (fake "77777777777777777777777777777777" "vulkan-loader-1.4.321") ];
    };
    llama-cpp-vulkan-stub = fake "44444444444444444444444444444444" "llama-cpp-vulkan-stub" // {
      backend = "vulkan";
      faKvPairs = null;
    };
    # the content goes to the real store (--read-write-mode), the path the
    # module sees is under stubStore with the same base name, where
    # check-nix.sh copies it (executable, as nixpkgs' writeShellScript is)
    writeText =
      name: text:
      let
        file = builtins.toFile name text;
      in
      fakePackage name "${stubStore}/${baseNameOf file}" // { storeCopy = file; };
    writeShellScript =
      name: text:
      let
        file = builtins.toFile name "#!/usr/bin/env bash\n${text}";
      in
      fakePackage name "${stubStore}/${baseNameOf file}" // { storeCopy = file; };
  });

  # the few options a VM test's machine sets besides ours
  vmModule = {
    options = {
      virtualisation = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      specialisation = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.configuration = mkOption {
              type = types.deferredModule;
              default = { };
            };
          }
        );
        default = { };
      };
    };
  };

  module =
    { config, ... }:
    {
      # the unit files, as NixOS's systemd module makes them
      config.systemd.units = lib.mapAttrs' (
        name: svc: lib.nameValuePair "${name}.service" { text = unitFile.render svc; }
      ) config.systemd.services;

      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        environment.etc = mkOption {
          type = types.attrsOf (
            types.submodule (
              { config, ... }:
              {
                options = {
                  source = mkOption { type = types.path; };
                  text = mkOption {
                    type = types.nullOr types.lines;
                    default = null;
                  };
                  mode = mkOption {
                    type = types.str;
                    default = "symlink";
                  };
                };
                config.source = lib.mkIf (config.text != null) (
                  lib.mkDefault "${stubStore}/00000000000000000000000000000000-etc-text"
                );
              }
            )
          );
          default = { };
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        hardware.graphics.enable = mkOption {
          type = types.bool;
          default = false;
        };
        systemd.services = mkOption {
          type = types.attrsOf service;
          default = { };
        };
        systemd.units = mkOption {
          type = types.attrsOf (types.submodule { options.text = mkOption { type = types.str; }; });
          default = { };
        };
      };
    };
}
