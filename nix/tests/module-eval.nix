# Evaluates services.rocm-llm and checks what it renders: the systemd unit
# (ExecStart, ExecReload, DeviceAllow, Environment, hardening), the firewall,
# the spec, and the assertion messages.
#
# Here (no nixpkgs):  nix-instantiate --eval --strict --json nix/tests/module-eval.nix \
#                       --arg lib 'import /path/to/nixpkgs.lib/lib' --argstr modelDir /tmp/m
# In the flake:       checks.module-eval passes evalConfig = the real NixOS module system.
#
# The result: { failed = [ names of failed checks ]; passed = [ ... ]; ... }
# plus the rendered specs and the sync script for scripts/check-nix.sh.
{
  lib,
  # modules -> config. null: lib.evalModules with ./nixos-stubs.nix
  evalConfig ? null,
  # where the test's model files are (check-nix.sh creates them there)
  modelDir ? "/var/lib/models",
}:
let
  inherit (lib)
    concatStringsSep
    filter
    hasInfix
    hasPrefix
    ;

  stubs = import ./nixos-stubs.nix { inherit lib; };

  eval =
    if evalConfig != null then
      evalConfig
    else
      modules:
      (lib.evalModules {
        modules = [
          stubs.module
          ../../modules/rocm-llm.nix
          { _module.args.pkgs = stubs.pkgs; }
        ]
        ++ modules;
      }).config;

  withService =
    cfg:
    eval [
      {
        services.rocm-llm = {
          enable = true;
        }
        // cfg;
      }
    ];

  # ---- the configurations ----------------------------------------------------

  models = {
    alpha = {
      model = "${modelDir}/alpha.gguf";
      aliases = [
        "a1"
        "gpt-4o-mini"
      ];
      default = true;
      ctx_size = 256;
      flash_attn = "on";
      cache_type_k = "q8_0";
      env.FOO = "bar";
      extra_args = [ "--no-warmup" ];
      ready_timeout = "2m";
    };
    beta = {
      model = "${modelDir}/beta.gguf";
      enabled = false;
      chat_template = "chatml";
      parallel = 2;
      gpu_layers = 0;
      on_demand = true;
      idle_timeout = "10m";
      swap = "blue_green";
    };
  };

  mainSettings = {
    listen = "0.0.0.0:8080";
    openFirewall = true;
    hsaOverrideGfxVersion = "11.0.0";
    environment.RUST_LOG = "info";
    extraArgs = [
      "--state-dir"
      "/var/lib/rocm-llm"
    ];
    settings = {
      control = "127.0.0.1:8081";
      defaults = {
        stop_grace = "45s";
        gpu_layers = "all";
      };
    };
    inherit models;
  };

  main = withService (mainSettings // { apiKeyFile = "/run/keys/rocm-llm"; });
  # the same without the API key file, whose path exists only inside the unit
  forValidate = withService mainSettings;
  declarativeOnly = withService {
    specFile = null;
    inherit models;
  };
  loopbackFirewall = withService {
    openFirewall = true;
    inherit models;
  };
  bad = withService {
    specFile = "relative/models.yaml";
    listen = "127.0.0.1:8081";
    settings.defaults.aliases = [ "x" ];
    models = {
      rel = {
        model = "models/x.gguf";
        aliases = [ "dup" ];
        default = true;
        extra_args = [
          "--port=9000"
          "-c"
          "512"
        ];
        env."1BAD" = "x";
        chat_template = "chatml";
        chat_template_file = "/etc/t.jinja";
      };
      "has space" = {
        model = "/m/space.gguf";
        aliases = [ "" ];
      };
      other = {
        model = "/m/other.gguf";
        aliases = [
          "dup"
          "rel"
        ];
        default = true;
      };
    };
  };

  # The spec main must render, written out by hand.
  expectedSpec = {
    listen = "0.0.0.0:8080";
    control = "127.0.0.1:8081";
    api_key_file = "/run/credentials/rocm-llm.service/api-key";
    defaults = {
      stop_grace = "45s";
      gpu_layers = "all";
      env.HSA_OVERRIDE_GFX_VERSION = "11.0.0";
    };
    models = {
      alpha = {
        model = "${modelDir}/alpha.gguf";
        aliases = [
          "a1"
          "gpt-4o-mini"
        ];
        default = true;
        ctx_size = 256;
        flash_attn = "on";
        cache_type_k = "q8_0";
        env.FOO = "bar";
        extra_args = [ "--no-warmup" ];
        ready_timeout = "2m";
      };
      beta = {
        model = "${modelDir}/beta.gguf";
        enabled = false;
        chat_template = "chatml";
        parallel = 2;
        gpu_layers = 0;
        on_demand = true;
        idle_timeout = "10m";
        swap = "blue_green";
      };
    };
  };

  # ---- helpers -------------------------------------------------------------------

  ours = c: filter (a: hasPrefix "services.rocm-llm" a.message) c.assertions;
  failedMessages = c: map (a: a.message) (filter (a: !a.assertion) (ours c));
  unit = c: c.systemd.services.rocm-llm;
  sc = c: (unit c).serviceConfig;
  env = c: (unit c).environment;
  pkg = c: toString c.services.rocm-llm.package;
  llama = c: toString c.services.rocm-llm.llamaServerPackage;
  q = s: builtins.toJSON s;
  # systemd takes a single string or a list for most settings
  asList = v: if builtins.isList v then v else [ v ];
  has = v: x: builtins.elem x (asList v);
  anyInfix = needle: list: builtins.any (m: hasInfix needle m) list;

  m = sc main;
  badMessages = failedMessages bad;

  checks = {
    # the unit
    "no assertion fails for a valid configuration" = failedMessages main == [ ];
    "Type=notify" = m.Type == "notify";
    "NotifyAccess=main" = m.NotifyAccess == "main";
    "ExecStart runs rocm-llm serve on the mutable spec, then extraArgs" =
      m.ExecStart == concatStringsSep " " [
        (q "${pkg main}/bin/rocm-llm")
        (q "serve")
        (q "--spec")
        (q "/var/lib/rocm-llm/models.yaml")
        (q "--state-dir")
        (q "/var/lib/rocm-llm")
      ];
    "ExecReload ends with kill -HUP $MAINPID" = hasInfix "/bin/kill -HUP $MAINPID" (
      lib.last (asList m.ExecReload)
    );
    "ExecReload first syncs the declared spec into the mutable file" =
      builtins.length (asList m.ExecReload) == 2
      && hasInfix (q "/etc/rocm-llm/models.yaml") (builtins.head (asList m.ExecReload));
    "ExecStartPre syncs the declared spec (on-change)" =
      builtins.length (asList m.ExecStartPre) == 1
      && hasInfix "${q "/etc/rocm-llm/models.yaml"} ${q "/var/lib/rocm-llm/models.yaml"} ${q "/var/lib/rocm-llm/declared-spec.sha256"} ${q "on-change"}" (
        builtins.head (asList m.ExecStartPre)
      );
    "a changed declaration reloads (reloadTriggers), it does not restart" =
      (unit main).reloadTriggers != [ ] && ((unit main).restartIfChanged or true);
    "KillMode=mixed (the daemon stops its children)" = m.KillMode == "mixed";
    "DeviceAllow char-kfd (/dev/kfd)" = has m.DeviceAllow "char-kfd rw";
    "DeviceAllow char-drm (/dev/dri/renderD*)" = has m.DeviceAllow "char-drm rw";
    "DevicePolicy=closed" = m.DevicePolicy == "closed";
    "PrivateDevices=false" = m.PrivateDevices == false;
    "SupplementaryGroups render video" =
      has m.SupplementaryGroups "render" && has m.SupplementaryGroups "video";
    "DynamicUser" = m.DynamicUser == true;
    "StateDirectory=rocm-llm" = has m.StateDirectory "rocm-llm";
    "ProtectSystem=strict" = m.ProtectSystem == "strict";
    "NoNewPrivileges" = m.NoNewPrivileges == true;
    "RestrictAddressFamilies AF_INET AF_INET6 AF_UNIX only" =
      lib.sort lib.lessThan (asList m.RestrictAddressFamilies) == [
        "AF_INET"
        "AF_INET6"
        "AF_UNIX"
      ];
    "SystemCallFilter @system-service, ~@privileged" =
      has m.SystemCallFilter "@system-service" && has m.SystemCallFilter "~@privileged";
    "hardening as nixpkgs' ollama/llama-cpp modules" =
      m.ProtectHome == true
      && m.PrivateTmp == true
      && m.PrivateUsers == true
      && m.ProtectKernelTunables == true
      && m.ProtectKernelModules == true
      && m.ProtectKernelLogs == true
      && m.ProtectControlGroups == true
      && m.ProtectClock == true
      && m.ProtectHostname == true
      && m.ProtectProc == "invisible"
      && m.LockPersonality == true
      && m.MemoryDenyWriteExecute == true
      && m.RestrictNamespaces == true
      && m.RestrictRealtime == true
      && m.RestrictSUIDSGID == true
      && m.RemoveIPC == true
      && m.SystemCallArchitectures == "native"
      && has m.CapabilityBoundingSet ""
      && m.UMask == "0077";
    "Environment ROCM_LLM_LLAMA_SERVER is llamaServerPackage's llama-server" =
      (env main).ROCM_LLM_LLAMA_SERVER == "${llama main}/bin/llama-server";
    "Environment HSA_OVERRIDE_GFX_VERSION" = (env main).HSA_OVERRIDE_GFX_VERSION == "11.0.0";
    "Environment from services.rocm-llm.environment" = (env main).RUST_LOG == "info";
    "LoadCredential api-key from apiKeyFile" = has m.LoadCredential "api-key:/run/keys/rocm-llm";
    "the CLI on PATH is wrapped with the service's llama-server" = builtins.any (
      p:
      hasPrefix "rocm-llm" (p.name or "")
      && hasInfix "--set-default ROCM_LLM_LLAMA_SERVER ${llama main}/bin/llama-server" (p.postBuild or "")
    ) main.environment.systemPackages;
    "openFirewall opens the listen port" = main.networking.firewall.allowedTCPPorts == [ 8080 ];
    "the declared spec is /etc/rocm-llm/models.yaml" = main.environment.etc ? "rocm-llm/models.yaml";
    "the rendered spec starts with a comment saying where it comes from" =
      hasPrefix "# Rendered by the NixOS module services.rocm-llm" main.services.rocm-llm.renderedSpec;
    "the rendered spec points api_key_file at the credential" =
      hasInfix ''api_key_file: "/run/credentials/rocm-llm.service/api-key"'' main.services.rocm-llm.renderedSpec;

    # specFile = null
    "specFile = null: ExecStart reads /etc/rocm-llm/models.yaml" =
      hasInfix "${q "--spec"} ${q "/etc/rocm-llm/models.yaml"}" (sc declarativeOnly).ExecStart;
    "specFile = null: no sync before start" = asList (sc declarativeOnly).ExecStartPre == [ ];
    "specFile = null: ExecReload only sends SIGHUP" =
      builtins.length (asList (sc declarativeOnly).ExecReload) == 1;
    "specFile = null: the firewall stays closed" =
      declarativeOnly.networking.firewall.allowedTCPPorts == [ ];

    "openFirewall on a loopback listen warns" = anyInfix "loopback" loopbackFirewall.warnings;

    # assertion messages
    "assertion: relative model path" =
      anyInfix ''services.rocm-llm.models.rel.model must be an absolute path, got "models/x.gguf"'' badMessages;
    "assertion: an alias used twice" = anyInfix ''"dup" is claimed by other, rel'' badMessages;
    "assertion: an alias equal to another model's name" =
      anyInfix ''"rel" is claimed by other, rel'' badMessages;
    "assertion: two default models" =
      anyInfix "at most one model may have default = true; set on other, rel" badMessages;
    "assertion: extra_args sets a daemon-owned flag" =
      anyInfix "extra_args sets --port=9000" badMessages;
    "assertion: chat_template and chat_template_file together" =
      anyInfix "set chat_template or chat_template_file, not both" badMessages;
    "assertion: bad env name" = anyInfix "bad: 1BAD" badMessages;
    "assertion: relative specFile" = anyInfix "specFile must be an absolute path or null" badMessages;
    "assertion: a model name with a space" =
      anyInfix ''models."has space": a model name must be 1 to 128 characters without spaces'' badMessages;
    "assertion: an empty alias" =
      anyInfix ''models."has space".aliases: an alias must be non-empty and without spaces; bad: "".'' badMessages;
    "assertion: aliases in settings.defaults" =
      anyInfix "settings.defaults: aliases can only be set on a model, not in defaults" badMessages;
    "assertion: listen on the control address" =
      anyInfix "listen and control (the status API) cannot share 127.0.0.1:8081" badMessages;
    "the invalid configuration fails exactly these 11 assertions" = builtins.length badMessages == 11;
  };

  failed = builtins.attrNames (lib.filterAttrs (_: ok: !ok) checks);
in
{
  inherit failed expectedSpec;
  passed = builtins.attrNames (lib.filterAttrs (_: ok: ok) checks);
  summary = {
    inherit failed;
    passed = builtins.length (builtins.attrNames checks) - builtins.length failed;
  };
  badMessages = badMessages;
  renderedSpec = main.services.rocm-llm.renderedSpec;
  validateSpec = forValidate.services.rocm-llm.renderedSpec;
  # the script the unit runs before start and on reload; check-nix.sh runs it
  syncCommand = builtins.head (asList m.ExecStartPre);
}
