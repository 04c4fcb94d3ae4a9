# services.rocm-llm: the rocm-llm daemon as a hardened systemd service.
#
# The declared spec (models + settings + listen + ...) is rendered to
# /etc/rocm-llm/models.yaml. Where the daemon reads its spec from:
#
#   specFile = null             (the default) the daemon reads
#                               /etc/rocm-llm/models.yaml: what runs is the
#                               declaration, changed only by nixos-rebuild.
#   specFile = "/var/lib/..."   the daemon reads this mutable file; editing it
#                               hot-swaps models at once. The declared spec is
#                               copied into it when the file does not exist
#                               and, with specFileUpdate = "on-change" (the
#                               default), whenever the declaration changes;
#                               local edits made in between are kept until
#                               then, and a replaced edited file is saved as
#                               FILE.bak.
#
# Either way a changed declaration reloads the service (reloadTriggers)
# instead of restarting it, and the daemon restarts only the models whose
# launch identity changed; a changed listen or control address restarts it
# (restartTriggers), since the daemon binds both once. See docs/nix.md.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    concatMap
    concatStringsSep
    filter
    filterAttrs
    mapAttrs
    mapAttrsToList
    mkIf
    mkOption
    optional
    optionals
    optionalAttrs
    types
    ;

  cfg = config.services.rocm-llm;
  yaml = import ./yaml.nix { inherit lib; };

  unitName = "rocm-llm";
  stateDir = "/var/lib/${unitName}";
  etcSpec = "/etc/rocm-llm/models.yaml";
  credentialsDir = "/run/credentials/${unitName}.service";

  # A value of the free-form part of the spec (what pkgs.formats.json accepts).
  specValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf specValue)
        (types.listOf specValue)
      ]
    )
    // {
      description = "spec value (YAML)";
    };

  # One systemd Exec argument, quoted so that systemd passes it unchanged.
  execArg = a: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString a));
  execLine = args: concatStringsSep " " (map execArg args);

  pathOrString = types.either types.path types.str;
  duration = types.str // {
    description = "duration such as \"500ms\", \"30s\", \"10m\", \"1h 30m\"";
  };

  # A per-model option of the spec: null leaves it out of the rendered file, so
  # the daemon's default applies (and the model's launch identity is the same
  # as if the option had never been written).
  specOption =
    type: description:
    mkOption {
      type = types.nullOr type;
      default = null;
      inherit description;
    };

  modelOptions = {
    freeformType = types.attrsOf specValue;
    options = {
      model = mkOption {
        type = pathOrString;
        example = "/var/lib/models/qwen2.5-7b-instruct-q4_k_m.gguf";
        description = ''
          The GGUF file (`--model`). Must be an absolute path. A Nix path
          literal is used as the path it names and is not copied into the
          store; keep models outside the store.
        '';
      };
      aliases = specOption (types.listOf types.str) "Extra `model` ids routed to this model.";
      default = specOption types.bool "Receives requests that name no model (at most one model).";
      enabled = specOption types.bool "`false` keeps the entry but runs nothing.";
      ctx_size = specOption (types.ints.between 0 4194304) "`--ctx-size`; 0 takes it from the model.";
      gpu_layers = specOption (types.either (types.ints.between 0 9999) (
        types.enum [
          "all"
          "auto"
        ]
      )) "`--gpu-layers`: a number, `all` or `auto`.";
      parallel = specOption (types.ints.between 1 256) "`--parallel`.";
      flash_attn = specOption (types.enum [
        "on"
        "off"
        "auto"
      ]) "`--flash-attn`.";
      cache_type_k = specOption cacheType "`--cache-type-k`.";
      cache_type_v = specOption cacheType "`--cache-type-v`.";
      threads = specOption (types.ints.between 1 1024) "`--threads`.";
      batch_size = specOption (types.ints.between 1 1048576) "`--batch-size`.";
      ubatch_size = specOption (types.ints.between 1 1048576) "`--ubatch-size`.";
      load_mode = specOption (types.enum [
        "auto"
        "none"
        "mmap"
        "mlock"
        "mmap+mlock"
        "dio"
      ]) "`--load-mode`.";
      chat_template = specOption types.str "`--chat-template`: a built-in name or Jinja source.";
      chat_template_file = specOption pathOrString "`--chat-template-file` (exclusive with chat_template).";
      jinja = specOption types.bool "`--jinja` / `--no-jinja`.";
      env = specOption (types.attrsOf types.str) "The llama-server child's extra environment.";
      extra_args = specOption (types.listOf types.str) ''
        Appended to llama-server's command line verbatim; may not set a flag
        the daemon owns (--host, --port, -m/--model, -a/--alias, --api-key,
        --api-key-file).
      '';
      ready_timeout = specOption duration "How long a start may take before it is a failure.";
      stop_grace = specOption duration "SIGTERM to SIGKILL.";
      restart = specOption (types.enum [
        "always"
        "on_failure"
        "never"
      ]) "What to do when the process exits.";
      swap = specOption (types.enum [
        "stop_first"
        "blue_green"
      ]) "How a changed model is replaced.";
      on_demand = specOption types.bool "Start at the first request instead of at load.";
      idle_timeout = specOption duration "Stop an on-demand model after this long without requests.";
      queue_length = specOption (types.ints.between 0 100000) "Requests that may wait for a starting model.";
      wait_timeout = specOption duration "How long a request waits for a starting model.";
      drain_timeout = specOption duration "How long in-flight requests may run before a stop cuts them.";
    };
  };

  cacheType = types.enum [
    "f32"
    "f16"
    "bf16"
    "q8_0"
    "q4_0"
    "q4_1"
    "iq4_nl"
    "q5_0"
    "q5_1"
  ];

  dropNulls = filterAttrs (_: v: v != null);

  renderModel =
    m:
    dropNulls m
    // {
      model = toString m.model;
    }
    // optionalAttrs (m.chat_template_file or null != null) {
      chat_template_file = toString m.chat_template_file;
    };

  listenPort = lib.toInt (lib.last (lib.splitString ":" cfg.listen));
  listenHost = lib.removeSuffix ":${toString listenPort}" cfg.listen;
  # the daemon's default control address (docs/spec.md)
  controlAddress = cfg.settings.control or "127.0.0.1:8081";

  declaredSpec = lib.recursiveUpdate cfg.settings (
    {
      inherit (cfg) listen;
      models = (cfg.settings.models or { }) // mapAttrs (_: renderModel) cfg.models;
    }
    // optionalAttrs (cfg.apiKeyFile != null) {
      api_key_file = "${credentialsDir}/api-key";
    }
    // optionalAttrs (cfg.hsaOverrideGfxVersion != null) {
      # also in the daemon's environment; here it is part of each model's
      # launch identity, so changing it restarts the models
      defaults.env.HSA_OVERRIDE_GFX_VERSION = cfg.hsaOverrideGfxVersion;
    }
  );

  specText = yaml.toYAML {
    header = [
      "Rendered by the NixOS module services.rocm-llm (docs/nix.md)."
    ]
    ++ (
      if cfg.specFile == null then
        [ "The daemon reads this file; change it in the NixOS configuration." ]
      else if cfg.specFileUpdate == "on-change" then
        [
          "Copied to ${cfg.specFile}; edit that copy to hot-swap models. It is"
          "replaced (the old one kept as .bak) when the NixOS declaration changes."
        ]
      else
        [
          "Copied to ${cfg.specFile} once, when that file did not exist; the"
          "copy is yours to edit."
        ]
    );
  } declaredSpec;

  declaredSpecFile = pkgs.writeText "rocm-llm-models.yaml" specText;

  specPath = if cfg.specFile == null then etcSpec else cfg.specFile;
  stampFile = "${stateDir}/declared-spec.sha256";

  # Brings the declared spec into the mutable spec file.
  # Arguments: DECLARED TARGET STAMP POLICY (on-change | if-missing)
  syncSpec = pkgs.writeShellScript "rocm-llm-sync-spec" ''
    set -eu
    PATH=${lib.makeBinPath [ pkgs.coreutils ]}
    declared=$1 target=$2 stamp=$3 policy=$4

    want=$(sha256sum <"$declared" | cut -d' ' -f1)
    if [ -e "$target" ]; then
      [ "$policy" = if-missing ] && exit 0
      last=$(cat "$stamp" 2>/dev/null || true)
      [ "$want" = "$last" ] && exit 0
      have=$(sha256sum <"$target" | cut -d' ' -f1)
      if [ "$have" != "$want" ] && [ "$have" != "$last" ]; then
        cp -f "$target" "$target.bak"
        echo "rocm-llm: the declared spec changed; local edits to $target saved as $target.bak" >&2
      fi
    fi
    mkdir -p "$(dirname "$target")"
    tmp="$target.tmp.$$"
    cat "$declared" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$target"
    echo "$want" >"$stamp"
    echo "rocm-llm: wrote the declared spec to $target" >&2
  '';

  syncCommand = execLine [
    syncSpec
    etcSpec
    cfg.specFile
    stampFile
    cfg.specFileUpdate
  ];

  # ---- checks of the rendered spec ------------------------------------------

  finalModels = declaredSpec.models;
  ownedFlags = [
    "--host"
    "--port"
    "-m"
    "--model"
    "-a"
    "--alias"
    "--api-key"
    "--api-key-file"
  ];
  perModelInDefaults = filter (k: (cfg.settings.defaults or { }) ? ${k}) [
    "model"
    "aliases"
    "default"
  ];
  flagOf = a: builtins.head (lib.splitString "=" a);
  ownedIn = args: filter (a: builtins.elem (flagOf a) ownedFlags) args;

  # every model id (name or alias) and the models claiming it
  claims = lib.foldl' (acc: c: acc // { ${c.id} = (acc.${c.id} or [ ]) ++ [ c.model ]; }) { } (
    concatMap (
      name:
      [
        {
          id = name;
          model = name;
        }
      ]
      ++ map (a: {
        id = a;
        model = name;
      }) (finalModels.${name}.aliases or [ ])
    ) (builtins.attrNames finalModels)
  );
  clashes = filterAttrs (_: ms: builtins.length ms > 1) claims;
  defaultModels = builtins.attrNames (filterAttrs (_: m: m.default or false) finalModels);

  modelAssertions = concatMap (
    name:
    let
      m = finalModels.${name};
      where = "services.rocm-llm.models.${lib.strings.escapeNixIdentifier name}";
      badEnv = filter (n: builtins.match "[A-Za-z_][A-Za-z0-9_]*" n == null) (
        builtins.attrNames (m.env or { })
      );
      owned = ownedIn (m.extra_args or [ ]);
      badAliases = filter (a: a == "" || builtins.match ".*[[:space:]].*" a != null) (m.aliases or [ ]);
    in
    [
      {
        assertion =
          builtins.stringLength name <= 128 && builtins.match "[^[:space:][:cntrl:]]+" name != null;
        message = "${where}: a model name must be 1 to 128 characters without spaces.";
      }
      {
        assertion = badAliases == [ ];
        message = "${where}.aliases: an alias must be non-empty and without spaces; bad: ${concatStringsSep ", " (map builtins.toJSON badAliases)}.";
      }
      {
        assertion = m ? model;
        message = "${where}: `model` (the GGUF file) is required.";
      }
      {
        assertion = !(m ? model) || lib.hasPrefix "/" (toString m.model);
        message = "${where}.model must be an absolute path, got \"${toString (m.model or "")}\". The daemon would resolve a relative path against the spec file's directory (/etc/rocm-llm or ${stateDir}).";
      }
      {
        assertion = !(m ? chat_template && m ? chat_template_file);
        message = "${where}: set chat_template or chat_template_file, not both.";
      }
      {
        assertion = !(m ? chat_template_file) || lib.hasPrefix "/" (toString m.chat_template_file);
        message = "${where}.chat_template_file must be an absolute path, got \"${
          toString (m.chat_template_file or "")
        }\".";
      }
      {
        assertion = badEnv == [ ];
        message = "${where}.env: variable names must match [A-Za-z_][A-Za-z0-9_]*; bad: ${concatStringsSep ", " badEnv}.";
      }
      {
        assertion = owned == [ ];
        message = "${where}.extra_args sets ${concatStringsSep ", " owned}, which the daemon owns (--host, --port, -m/--model, -a/--alias, --api-key, --api-key-file).";
      }
    ]
  ) (builtins.attrNames finalModels);

  # ---- warnings about what the unit's sandbox or the build cannot do --------

  llama = cfg.llamaServerPackage;
  backend = llama.backend or (llama.passthru.backend or null);
  # this flake's builds say their backend; nixpkgs' own llama-cpp-vulkan is
  # told by the Vulkan loader it links
  isVulkan =
    backend == "vulkan"
    || (
      backend == null
      && (
        lib.hasInfix "vulkan" (lib.getName llama)
        || builtins.any (d: lib.getName d == "vulkan-loader") (llama.buildInputs or [ ])
      )
    );

  # ProtectHome=true hides these from the service
  hiddenPrefixes = [
    "/home/"
    "/root/"
    "/run/user/"
  ];
  hidden = p: builtins.any (pre: lib.hasPrefix pre (toString p)) hiddenPrefixes;
  protectHome = config.systemd.services.${unitName}.serviceConfig.ProtectHome or true;
  hiddenFiles = concatMap (
    name:
    let
      m = finalModels.${name};
    in
    map (p: "${name}: ${toString p}") (
      filter hidden (
        lib.optional (m ? model) m.model ++ lib.optional (m ? chat_template_file) m.chat_template_file
      )
    )
  ) (builtins.attrNames finalModels);

  # flash_attn = "on" with a K/V cache pair the HIP or CUDA build has no
  # FlashAttention kernel for (faKvPairs: null = every pair, or not known)
  faPairs = llama.faKvPairs or (llama.passthru.faKvPairs or null);
  specDefaults = cfg.settings.defaults or { };
  effective =
    m: k: fallback:
    m.${k} or (specDefaults.${k} or fallback);
  faMisses =
    if faPairs == null then
      [ ]
    else
      concatMap (
        name:
        let
          m = finalModels.${name};
          pair = "${effective m "cache_type_k" "f16"}-${effective m "cache_type_v" "f16"}";
        in
        lib.optional (
          effective m "flash_attn" "auto" == "on" && !(builtins.elem pair faPairs)
        ) "${name} (${pair})"
      ) (builtins.attrNames finalModels);
in
{
  options.services.rocm-llm = {
    enable = lib.mkEnableOption "rocm-llm, which supervises llama-server processes to match a YAML spec";

    package = mkOption {
      type = types.package;
      # pkgs.rocm-llm only where this flake's overlay is applied (tested by an
      # attribute only that overlay defines), else built from this flake
      default =
        if pkgs ? rocm-llm-llama-cpp-rocm then pkgs.rocm-llm else pkgs.callPackage ../nix/rocm-llm.nix { };
      defaultText = lib.literalMD "this flake's rocm-llm (`pkgs.rocm-llm` with the overlay, else built from the flake with the system's nixpkgs)";
      description = "The rocm-llm package. Its llama-server is set by `llamaServerPackage`.";
    };

    llamaServerPackage = mkOption {
      type = types.package;
      # never nixpkgs' own llama-cpp-rocm (another build number, every GPU
      # target, flags the daemon may pass missing): this flake's pinned build
      default =
        pkgs.rocm-llm-llama-cpp-rocm or (pkgs.callPackage ../nix/llama-cpp.nix { backend = "rocm"; });
      defaultText = lib.literalMD "this flake's llama.cpp b11434 for HIP/ROCm, gfx1101 only (`pkgs.rocm-llm-llama-cpp-rocm` with the overlay, else built from the flake); never nixpkgs' own `llama-cpp-rocm`";
      example = lib.literalExpression ''rocm-llm.packages.x86_64-linux.llama-cpp-rocm.override { rocmGpuTargets = [ "gfx1100" ]; }'';
      description = ''
        The llama.cpp build whose `bin/llama-server` runs the models; passed as
        ROCM_LLM_LLAMA_SERVER. This flake has llama-cpp-rocm, llama-cpp-cuda,
        llama-cpp-vulkan and llama-cpp-cpu (with the overlay:
        `pkgs.rocm-llm-llama-cpp-*`). The Vulkan build needs
        `hardware.graphics.enable`.
      '';
    };

    models = mkOption {
      type = types.attrsOf (types.submodule modelOptions);
      default = { };
      example = lib.literalExpression ''
        {
          qwen = {
            model = "/var/lib/models/qwen2.5-7b-instruct-q4_k_m.gguf";
            aliases = [ "gpt-4o-mini" ];
            default = true;
            ctx_size = 16384;
            gpu_layers = "all";
            flash_attn = "on";
          };
        }
      '';
      description = ''
        The models, by OpenAI `model` id. Each takes the per-model keys of the
        spec (docs/spec.md) under the same snake_case names; unset keys are
        left out, so the daemon's defaults (and `settings.defaults`) apply.
        Keys this module does not know yet are passed through unchanged.
      '';
    };

    settings = mkOption {
      type = types.attrsOf specValue;
      default = { };
      example = lib.literalExpression ''
        {
          control = "127.0.0.1:8081";
          defaults = { gpu_layers = "all"; flash_attn = "on"; stop_grace = "45s"; };
        }
      '';
      description = ''
        The rest of the spec, free-form: `control`, `defaults`, ... Rendered
        under the typed options, which win where both set the same key.
      '';
    };

    renderedSpec = mkOption {
      type = types.str;
      readOnly = true;
      description = "The spec this module renders (the text of /etc/rocm-llm/models.yaml).";
    };

    specFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "${stateDir}/models.yaml";
      description = ''
        `null` (the default): the daemon reads the declared
        /etc/rocm-llm/models.yaml, so what runs is always the declaration,
        and it changes by `nixos-rebuild` (a reload, not a restart).

        A path: a mutable spec file the daemon reads instead. This is the way
        to hot-swap models without nixos-rebuild: edit the file and the
        daemon applies it at once (`systemctl reload rocm-llm` forces a
        re-read). The declared spec is copied into it as `specFileUpdate`
        says, so what runs is the declaration only until someone edits the
        file. A file outside ${stateDir} must be writable by the service's
        dynamic user.
      '';
    };

    specFileUpdate = mkOption {
      type = types.enum [
        "on-change"
        "if-missing"
      ];
      default = "on-change";
      description = ''
        When the declared spec is copied into `specFile`:
        `on-change`: when the file is missing and whenever the declaration
        changes (a replaced file that had local edits is kept as FILE.bak);
        `if-missing`: only when the file does not exist, after which the file
        belongs to whoever edits it.
      '';
    };

    listen = mkOption {
      type = types.strMatching ".+:[0-9]+";
      default = "127.0.0.1:8080";
      example = "0.0.0.0:8080";
      description = "`host:port` of the OpenAI-compatible endpoint (the spec's `listen`).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the `listen` port in the firewall. The control port stays closed.";
    };

    apiKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/rocm-llm-api-key";
      description = ''
        A file holding the bearer key clients must send. Read by systemd
        (LoadCredential), so it may be readable by root only; the spec points
        at the service's credential copy. Give a string, not a Nix path
        literal, which would put the key into the world-readable store.
        systemd copies the file when the service starts, so a rotated key
        takes effect with `systemctl restart rocm-llm` (a reload re-reads
        the copy, which has not changed).
      '';
    };

    hsaOverrideGfxVersion = mkOption {
      type = types.nullOr (types.strMatching "[0-9]+\\.[0-9]+\\.[0-9]+");
      default = null;
      example = "11.0.1";
      description = ''
        HSA_OVERRIDE_GFX_VERSION for a GPU whose gfx target is not among the
        llama.cpp build's targets: makes ROCm load the kernels of the named
        target (11.0.1 = gfx1101). Set for the daemon and, via
        `defaults.env`, for every model.
      '';
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        HIP_VISIBLE_DEVICES = "0";
        RUST_LOG = "rocm_llm=debug";
      };
      description = "Environment of the daemon, inherited by the llama-server children.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra arguments to `rocm-llm serve`.";
    };
  };

  config = mkIf cfg.enable {
    services.rocm-llm.renderedSpec = specText;

    assertions = [
      {
        assertion = cfg.specFile == null || lib.hasPrefix "/" cfg.specFile;
        message = "services.rocm-llm.specFile must be an absolute path or null, got \"${toString cfg.specFile}\".";
      }
      {
        assertion = cfg.specFile == null || !(lib.hasPrefix "/nix/store/" cfg.specFile);
        message = "services.rocm-llm.specFile must be a writable path, not in /nix/store; use null to read the declared spec.";
      }
      {
        assertion = clashes == { };
        message = "services.rocm-llm: each model id (model name or alias) must be unique; ${
          concatStringsSep "; " (
            mapAttrsToList (id: ms: "\"${id}\" is claimed by ${concatStringsSep ", " ms}") clashes
          )
        }.";
      }
      {
        assertion = builtins.length defaultModels <= 1;
        message = "services.rocm-llm: at most one model may have default = true; set on ${concatStringsSep ", " defaultModels}.";
      }
      {
        assertion = perModelInDefaults == [ ];
        message = "services.rocm-llm.settings.defaults: ${concatStringsSep ", " perModelInDefaults} can only be set on a model, not in defaults.";
      }
      {
        assertion = !isVulkan || config.hardware.graphics.enable;
        message = "services.rocm-llm: llamaServerPackage is a Vulkan build (${lib.getName llama}), which finds no Vulkan driver unless hardware.graphics.enable = true.";
      }
      {
        assertion = cfg.listen != controlAddress;
        message = "services.rocm-llm: listen and control (the status API) cannot share ${cfg.listen}; set settings.control to another address.";
      }
      {
        assertion = ownedIn (cfg.settings.defaults.extra_args or [ ]) == [ ];
        message = "services.rocm-llm.settings.defaults.extra_args sets ${
          concatStringsSep ", " (ownedIn (cfg.settings.defaults.extra_args or [ ]))
        }, which the daemon owns.";
      }
    ]
    ++ modelAssertions;

    warnings =
      optional (
        cfg.openFirewall
        && builtins.elem listenHost [
          "127.0.0.1"
          "localhost"
          "[::1]"
        ]
      ) "services.rocm-llm.openFirewall is set, but listen (${cfg.listen}) is a loopback address."
      ++
        optional (cfg.models == { } && !(cfg.settings ? models) && cfg.specFile == null)
          "services.rocm-llm: no models are declared and specFile is null, so the daemon has nothing to run."
      ++
        optional (hiddenFiles != [ ] && protectHome == true)
          "services.rocm-llm: the service runs with ProtectHome=true, which hides ${concatStringsSep ", " hiddenFiles}; move the files under /var/lib (or /srv), or set systemd.services.rocm-llm.serviceConfig.ProtectHome = lib.mkForce \"read-only\" and make them readable by any user."
      ++
        optional (faMisses != [ ])
          "services.rocm-llm: flash_attn = \"on\" with a K/V cache pair that ${lib.getName llama} has no FlashAttention kernel for: ${concatStringsSep ", " faMisses}; it has ${concatStringsSep ", " faPairs}. Use one of those cache types, flash_attn = \"auto\", or a build with faQuants (GGML_CUDA_FA_QUANTS).";

    environment.etc."rocm-llm/models.yaml".source = declaredSpecFile;

    # the CLI for administrators (`rocm-llm status`, `validate`, `plan`), with
    # the service's llama-server as its default, so `plan` shows what runs
    environment.systemPackages = [
      (pkgs.callPackage ../nix/wrapped.nix {
        rocm-llm = cfg.package;
        llama-cpp = cfg.llamaServerPackage;
      })
    ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ listenPort ];

    systemd.services.rocm-llm = {
      description = "rocm-llm: local LLMs supervised from a YAML spec";
      wantedBy = [ "multi-user.target" ];
      # a local service: it binds its addresses, it needs no network to be up
      after = [ "network.target" ];

      # A changed declaration changes only /etc/rocm-llm/models.yaml: the unit
      # itself stays the same, and switch-to-configuration reloads instead of
      # restarting, so only models whose launch identity changed restart.
      # The daemon binds listen and control once (a reload only warns), so a
      # change of either restarts the service; so does a new package or
      # llama-server, since the unit's command or environment changes.
      reloadTriggers = [ declaredSpecFile ];
      restartTriggers = [
        cfg.listen
        controlAddress
      ];

      environment = {
        ROCM_LLM_LLAMA_SERVER = lib.getExe' cfg.llamaServerPackage "llama-server";
        HOME = stateDir;
        XDG_CACHE_HOME = "/var/cache/${unitName}";
      }
      // optionalAttrs (cfg.hsaOverrideGfxVersion != null) {
        HSA_OVERRIDE_GFX_VERSION = cfg.hsaOverrideGfxVersion;
      }
      // cfg.environment;

      serviceConfig = {
        # The daemon sends READY=1, and on SIGHUP RELOADING=1 with
        # MONOTONIC_USEC= and then READY=1 once the new spec is applied.
        # Reading /etc directly (specFile = null), notify-reload lets systemd
        # send the SIGHUP itself and makes `systemctl reload` (and so
        # nixos-rebuild) wait for that. With a mutable file the declaration
        # must be copied into it before the signal, which only ExecReload
        # orders (notify-reload would signal first), so that stays notify.
        Type = if cfg.specFile == null then "notify-reload" else "notify";
        NotifyAccess = "main";
        ExecStartPre = optional (cfg.specFile != null) syncCommand;
        ExecStart = execLine (
          [
            (lib.getExe' cfg.package "rocm-llm")
            "serve"
            "--spec"
            specPath
          ]
          ++ cfg.extraArgs
        );
        ExecReload = optionals (cfg.specFile != null) [
          syncCommand
          "${lib.getExe' pkgs.coreutils "kill"} -HUP $MAINPID"
        ];
        # SIGTERM to the daemon only; it stops its children with each model's
        # stop_grace (SIGKILL of a busy ROCm process can hang the GPU) and
        # drain_timeout, then systemd kills whatever is left.
        KillMode = "mixed";
        TimeoutStartSec = "5min";
        TimeoutStopSec = lib.mkDefault "6min";
        Restart = "on-failure";
        RestartSec = "5s";

        DynamicUser = true;
        StateDirectory = unitName;
        StateDirectoryMode = "0750";
        CacheDirectory = unitName;
        CacheDirectoryMode = "0750";
        WorkingDirectory = stateDir;
        LoadCredential = optional (cfg.apiKeyFile != null) "api-key:${toString cfg.apiKeyFile}";
        ReadWritePaths = optional (cfg.specFile != null && !(lib.hasPrefix "${stateDir}/" cfg.specFile)) (
          dirOf cfg.specFile
        );

        # GPU access: /dev/kfd (ROCm compute) and /dev/dri/renderD* (DRM render
        # nodes, also what Vulkan uses). Nothing else under /dev but the
        # pseudo devices DevicePolicy=closed always allows. Where a device
        # class is absent (no amdgpu) systemd skips it and the unit starts.
        PrivateDevices = false;
        DevicePolicy = "closed";
        DeviceAllow = [
          "char-kfd rw"
          "char-drm rw"
        ];
        SupplementaryGroups = [
          "render"
          "video"
        ];
        # load_mode mlock / mmap+mlock pin the weights in RAM
        LimitMEMLOCK = "infinity";

        # hardening, after nixpkgs' ollama and llama-cpp modules
        CapabilityBoundingSet = [ "" ];
        AmbientCapabilities = [ "" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateMounts = true;
        PrivateUsers = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        # /proc/meminfo and /proc/cpuinfo, which llama.cpp and ROCm read
        ProcSubset = "all";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "@resources"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
      };
    };
  };
}
