# Evaluates services.rocm-llm and checks what it renders: the systemd unit
# (ExecStart, ExecReload, Type, triggers, DeviceAllow, Environment), what
# switch-to-configuration does on a change, the firewall, the spec, the
# assertion and warning messages, the default packages with and without the
# overlay, and that the stubbed NixOS options reject what NixOS rejects.
#
# Here (no nixpkgs):  NIXPKGS_LIB_DIR=/path/to/lib nix-instantiate --eval --strict --json \
#                       --read-write-mode nix/tests/module-eval.nix \
#                       --arg lib 'import /path/to/lib' --argstr modelDir /tmp/m
# In the flake:       checks.module-eval passes evalConfig = the real NixOS
#                     module system (whose systemd module writes the unit).
#
# The result: { failed = [ names of failed checks ]; passed = [ ... ]; ... }
# plus the rendered specs, unit files and the sync script for check-nix.sh.
{
  lib,
  # modules -> config. null: lib.evalModules with ./nixos-stubs.nix
  evalConfig ? null,
  # where the test's model files are (check-nix.sh creates them there)
  modelDir ? "/var/lib/models",
  # where the stubs' fake packages live (check-nix.sh: a scratch directory)
  stubStore ? "/nix/store",
}:
let
  inherit (lib)
    concatStringsSep
    filter
    hasInfix
    hasPrefix
    ;

  stubs = import ./stub-nixpkgs/nixos-stubs.nix { inherit lib stubStore; };
  unitFile = import ./stub-nixpkgs/unit-file.nix { inherit lib; };
  stubbed = evalConfig == null;

  evalWith =
    pkgs: modules:
    (lib.evalModules {
      modules = [
        stubs.module
        ../../modules/rocm-llm.nix
        { _module.args.pkgs = pkgs; }
      ]
      ++ modules;
    }).config;

  eval = if stubbed then evalWith stubs.pkgs else evalConfig;

  # the unit file (the stubs render it with ./stub-nixpkgs/unit-file.nix)
  text = c: c.systemd.units."rocm-llm.service".text;

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
      cache_type_v = "q8_0";
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

  mutableSpec = "/var/lib/rocm-llm/models.yaml";

  mainSettings = {
    listen = "0.0.0.0:8080";
    openFirewall = true;
    specFile = mutableSpec;
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
  # the defaults: specFile = null
  declarative = withService { inherit models; };
  # one change at a time, for what switch-to-configuration does
  changedModel = withService {
    models = models // {
      beta = models.beta // {
        ctx_size = 384;
      };
    };
  };
  changedListen = withService {
    inherit models;
    listen = "127.0.0.1:9090";
  };
  changedControl = withService {
    inherit models;
    settings.control = "127.0.0.1:9091";
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

  # hardware.graphics is set through a module of its own, as a user would
  withGraphics =
    enable: cfg:
    eval [
      {
        services.rocm-llm = {
          enable = true;
        }
        // cfg;
        hardware.graphics.enable = enable;
      }
    ];
  vulkanNoGraphics = withGraphics false {
    inherit models;
    llamaServerPackage = stubs.pkgs.llama-cpp-vulkan-stub;
  };
  vulkanGraphics = withGraphics true {
    inherit models;
    llamaServerPackage = stubs.pkgs.llama-cpp-vulkan-stub;
  };
  changedLlama = vulkanGraphics;
  nixpkgsVulkanNoGraphics = withGraphics false {
    inherit models;
    llamaServerPackage = stubs.pkgs.nixpkgs-llama-cpp-vulkan;
  };

  homeModels = {
    home = {
      model = "/home/alice/models/q.gguf";
    };
  };
  inHome = withService { models = homeModels; };
  inHomeReadOnly = eval [
    {
      services.rocm-llm = {
        enable = true;
        models = homeModels;
      };
      systemd.services.rocm-llm.serviceConfig.ProtectHome = lib.mkForce "read-only";
    }
  ];

  faMismatch = withService {
    models.fa = {
      model = "${modelDir}/alpha.gguf";
      flash_attn = "on";
      cache_type_k = "q8_0";
    };
  };
  faByDefaults = withService {
    settings.defaults = {
      flash_attn = "on";
      cache_type_k = "q4_0";
      cache_type_v = "q8_0";
    };
    models.fa.model = "${modelDir}/alpha.gguf";
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
        cache_type_v = "q8_0";
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

  # NixOS reads the message of a failed assertion only; so do these
  failedMessages =
    c:
    filter (hasPrefix "services.rocm-llm") (map (a: a.message) (filter (a: !a.assertion) c.assertions));
  ourWarnings = c: filter (hasPrefix "services.rocm-llm") c.warnings;
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
  switch = a: b: unitFile.switchAction (text a) (text b);
  # does evaluating the value fail (a type error, an assertion)?
  rejects = v: !(builtins.tryEval (builtins.deepSeq v v)).success;

  m = sc main;
  d = sc declarative;
  badMessages = failedMessages bad;

  # what an option set somewhere in a configuration evaluates to, through
  # the same module system (stubbed or real)
  plain = modules: eval modules;

  # without this flake's overlay: nixpkgs of 2025+ has llama-cpp-rocm of its
  # own, which the module must not pick (the stub nixpkgs has one)
  withoutOverlay =
    if stubbed then
      evalWith (import ./stub-nixpkgs { }) [
        {
          services.rocm-llm = {
            enable = true;
            inherit models;
          };
        }
      ]
    else
      null;

  checks = {
    # the unit of the default configuration (specFile = null)
    "no assertion fails for a valid configuration" =
      failedMessages main == [ ] && failedMessages declarative == [ ];
    "no warning for a valid configuration" = ourWarnings main == [ ] && ourWarnings declarative == [ ];
    "default: specFile = null, ExecStart reads /etc/rocm-llm/models.yaml" =
      declarative.services.rocm-llm.specFile == null
      && hasInfix "${q "--spec"} ${q "/etc/rocm-llm/models.yaml"}" d.ExecStart;
    "default: Type=notify-reload (systemd sends SIGHUP, reload waits for READY)" =
      d.Type == "notify-reload";
    "default: no ExecReload, no sync before start" =
      asList (d.ExecReload or [ ]) == [ ] && asList (d.ExecStartPre or [ ]) == [ ];
    "default: the firewall stays closed" = declarative.networking.firewall.allowedTCPPorts == [ ];
    "after network.target, no wait for network-online.target" =
      (unit declarative).after == [ "network.target" ]
      && !(builtins.elem "network-online.target" ((unit declarative).wants ++ (unit declarative).after));
    "NotifyAccess=main" = d.NotifyAccess == "main";

    # the mutable spec file
    "mutable: Type=notify (the sync has to precede the SIGHUP)" = m.Type == "notify";
    "mutable: ExecStart runs rocm-llm serve on the mutable spec, then extraArgs" =
      m.ExecStart == concatStringsSep " " [
        (q "${pkg main}/bin/rocm-llm")
        (q "serve")
        (q "--spec")
        (q mutableSpec)
        (q "--state-dir")
        (q "/var/lib/rocm-llm")
      ];
    "mutable: ExecReload syncs the declaration, then kill -HUP $MAINPID" =
      builtins.length (asList m.ExecReload) == 2
      && hasInfix (q "/etc/rocm-llm/models.yaml") (builtins.head (asList m.ExecReload))
      && hasInfix "/bin/kill -HUP $MAINPID" (lib.last (asList m.ExecReload));
    "mutable: ExecStartPre syncs the declared spec (on-change)" =
      builtins.length (asList m.ExecStartPre) == 1
      && hasInfix "${q "/etc/rocm-llm/models.yaml"} ${q mutableSpec} ${q "/var/lib/rocm-llm/declared-spec.sha256"} ${q "on-change"}" (
        builtins.head (asList m.ExecStartPre)
      );

    # what nixos-rebuild switch does, from the unit files before and after
    "switch: an unchanged configuration does nothing" =
      switch declarative (withService {
        inherit models;
      }) == "none";
    "switch: a changed model reloads, it does not restart" =
      switch declarative changedModel == "reload";
    "switch: a changed listen restarts (the daemon binds it once)" =
      switch declarative changedListen == "restart";
    "switch: a changed control address restarts" = switch declarative changedControl == "restart";
    "switch: another llama-server restarts" = switch declarative changedLlama == "restart";
    "the unit file names the declared spec in X-Reload-Triggers" = hasInfix "X-Reload-Triggers=" (
      text declarative
    );

    "KillMode=mixed (the daemon stops its children)" = m.KillMode == "mixed";
    "DeviceAllow char-kfd (/dev/kfd) and char-drm (/dev/dri), DevicePolicy=closed" =
      has m.DeviceAllow "char-kfd rw" && has m.DeviceAllow "char-drm rw" && m.DevicePolicy == "closed";
    "SupplementaryGroups render video" =
      has m.SupplementaryGroups "render" && has m.SupplementaryGroups "video";
    "Environment ROCM_LLM_LLAMA_SERVER is llamaServerPackage's llama-server" =
      (env main).ROCM_LLM_LLAMA_SERVER == "${llama main}/bin/llama-server";
    "Environment HSA_OVERRIDE_GFX_VERSION" = (env main).HSA_OVERRIDE_GFX_VERSION == "11.0.0";
    "Environment from services.rocm-llm.environment" = (env main).RUST_LOG == "info";
    "LoadCredential api-key from apiKeyFile" = has m.LoadCredential "api-key:/run/keys/rocm-llm";
    "the CLI on PATH is wrapped with the service's llama-server (passthru)" = builtins.any (
      p:
      (p.llamaServer.outPath or null) == llama main
      && builtins.elem "${llama main}/bin/llama-server" (p.wrapperArgs or [ ])
    ) main.environment.systemPackages;
    "openFirewall opens the listen port" = main.networking.firewall.allowedTCPPorts == [ 8080 ];
    "the declared spec is /etc/rocm-llm/models.yaml" = main.environment.etc ? "rocm-llm/models.yaml";
    "the rendered spec starts with a comment saying where it comes from" =
      hasPrefix "# Rendered by the NixOS module services.rocm-llm" main.services.rocm-llm.renderedSpec;
    "the rendered spec points api_key_file at the credential" =
      hasInfix ''api_key_file: "/run/credentials/rocm-llm.service/api-key"'' main.services.rocm-llm.renderedSpec;

    "openFirewall on a loopback listen warns" = anyInfix "loopback" (ourWarnings loopbackFirewall);

    # warnings and assertions about the sandbox and the build
    "a model under /home warns (ProtectHome hides it)" =
      anyInfix "ProtectHome=true, which hides home: /home/alice/models/q.gguf" (ourWarnings inHome);
    "no /home warning once ProtectHome is read-only" = ourWarnings inHomeReadOnly == [ ];
    "flash_attn on with a K/V pair the build lacks warns" =
      anyInfix "no FlashAttention kernel for: fa (q8_0-f16)" (ourWarnings faMismatch);
    "the FA warning reads settings.defaults too" = anyInfix "fa (q4_0-q8_0)" (ourWarnings faByDefaults);
    "flash_attn on with a compiled K/V pair does not warn" = ourWarnings main == [ ];
    "assertion: a Vulkan build without hardware.graphics.enable" =
      anyInfix "is a Vulkan build (llama-cpp-vulkan-stub), which finds no Vulkan driver unless hardware.graphics.enable = true" (
        failedMessages vulkanNoGraphics
      );
    "a Vulkan build with hardware.graphics.enable passes" = failedMessages vulkanGraphics == [ ];
    "assertion: nixpkgs' own Vulkan build (it links vulkan-loader) without hardware.graphics.enable" =
      anyInfix "is a Vulkan build (llama-cpp)" (failedMessages nixpkgsVulkanNoGraphics);

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

    # the option types reject what NixOS rejects
    "types: wants must name units" =
      rejects
        (plain [
          { systemd.services.x.wants = [ "network-online" ]; }
        ]).systemd.services.x.wants;
    "types: an unknown service Type" =
      rejects
        (plain [
          { systemd.services.x.serviceConfig.Type = "notifyy"; }
        ]).systemd.services.x.serviceConfig;
    "types: two values for one setting" =
      rejects
        (plain [
          { systemd.services.x.serviceConfig.Type = "notify"; }
          { systemd.services.x.serviceConfig.Type = "simple"; }
        ]).systemd.services.x.serviceConfig;
    "types: an unknown unit attribute" =
      rejects
        (plain [
          { systemd.services.x.wantedby = [ "multi-user.target" ]; }
        ]).systemd.services.x;
    "types: systemPackages takes packages" =
      rejects
        (plain [
          { environment.systemPackages = [ "/usr/bin/rocm-llm" ]; }
        ]).environment.systemPackages;
    "types: a port out of range" =
      rejects
        (plain [
          { networking.firewall.allowedTCPPorts = [ 70000 ]; }
        ]).networking.firewall.allowedTCPPorts;
    "types: the same configurations without the mistake evaluate" =
      !(rejects
        (plain [
          {
            systemd.services.x = {
              wants = [ "network-online.target" ];
              serviceConfig.Type = "notify";
            };
            networking.firewall.allowedTCPPorts = [ 8080 ];
          }
        ]).systemd.services.x.wants
      );
  }
  // lib.optionalAttrs stubbed {
    # (the real nixpkgs decides these itself in checks.module-eval)
    "without the overlay: this flake's llama.cpp b11434, not nixpkgs' llama-cpp-rocm" =
      let
        l = withoutOverlay.services.rocm-llm.llamaServerPackage;
      in
      (l.rocmLlmBuild or false) && l.version == "0.6.0-b11434" && l.backend == "rocm";
    "without the overlay: rocm-llm built from this flake" =
      withoutOverlay.services.rocm-llm.package.pname == "rocm-llm";
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
  inherit badMessages;
  renderedSpec = main.services.rocm-llm.renderedSpec;
  validateSpec = forValidate.services.rocm-llm.renderedSpec;
  # the script the unit runs before start and on reload; check-nix.sh runs it
  syncCommand = builtins.head (asList m.ExecStartPre);
  # the unit files, for systemd-analyze (check-nix.sh)
  units = {
    declarative = text declarative;
    mutable = text main;
    # the baseline systemd-analyze security compares against
    ollama = unitFile.render (import ./ollama-unit.nix { inherit stubStore; });
  };
}
