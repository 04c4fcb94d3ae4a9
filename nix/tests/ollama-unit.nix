# A baseline for `systemd-analyze security`: the systemd service of nixpkgs'
# services.ollama (another local-LLM server with GPU access), as a
# `systemd.services.<name>` value for ./stub-nixpkgs/unit-file.nix. The settings were read
# from its module (nixos/modules/services/misc/ollama.nix, serviceConfig, in
# nixpkgs commit 071a30ae, the version the project's search tool holds; the
# pinned nixpkgs could not be read here) and are written out here as plain
# values, with the default (dynamic) user. ExecStart points at a stand-in.
{ stubStore }:
{
  description = "Server for local large language models";
  after = [ "network.target" ];
  environment = {
    HOME = "/var/lib/ollama";
    OLLAMA_MODELS = "/var/lib/ollama/models";
    OLLAMA_HOST = "127.0.0.1:11434";
  };
  serviceConfig = {
    Type = "exec";
    DynamicUser = true;
    ExecStart = "${stubStore}/55555555555555555555555555555555-ollama-stub/bin/ollama serve";
    WorkingDirectory = "/var/lib/ollama";
    StateDirectory = [ "ollama" ];
    ReadWritePaths = [
      "/var/lib/ollama"
      "/var/lib/ollama/models"
    ];
    CapabilityBoundingSet = [ "" ];
    DeviceAllow = [
      "char-nvidiactl"
      "char-nvidia-caps"
      "char-nvidia-frontend"
      "char-nvidia-uvm"
      "char-drm"
      "char-fb"
      "char-kfd"
      "/dev/dxg"
    ];
    DevicePolicy = "closed";
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    NoNewPrivileges = true;
    PrivateDevices = false;
    PrivateTmp = true;
    PrivateUsers = true;
    ProcSubset = "all";
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHome = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    ProtectSystem = "strict";
    RemoveIPC = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    SupplementaryGroups = [ "render" ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service @resources"
      "~@privileged"
    ];
    UMask = "0077";
  };
}
