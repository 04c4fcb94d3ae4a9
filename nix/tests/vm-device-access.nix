# NixOS VM test: the unit may open /dev/kfd and /dev/dri (DeviceAllow,
# render/video groups), and starts in a VM where neither device exists.
{
  pkgs,
  self,
  tinyModel,
}:
pkgs.testers.runNixOSTest {
  name = "rocm-llm-device-access";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 2048;
      environment.systemPackages = [ pkgs.curl ];
      services.rocm-llm = {
        enable = true;
        # the ROCm build: it starts, finds no GPU and llama.cpp falls back to
        # the CPU; only the unit's device setup is under test here
        models.tiny = {
          model = "${tinyModel}/tiny.gguf";
          ctx_size = 256;
          gpu_layers = 0;
        };
      };
    };

  testScript = ''
    machine.wait_for_unit("rocm-llm.service")
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:8081/healthz", timeout=120)

    with subtest("the devices are absent in this VM"):
        machine.fail("test -e /dev/kfd")
        machine.fail("grep -qw kfd /proc/devices")

    with subtest("the unit allows /dev/kfd and /dev/dri and nothing else"):
        props = machine.succeed(
            "systemctl show rocm-llm.service -p DeviceAllow -p DevicePolicy -p PrivateDevices"
        )
        print(props)
        assert "char-kfd" in props, props
        assert "char-drm" in props, props
        assert "DevicePolicy=closed" in props, props
        assert "PrivateDevices=no" in props, props

    with subtest("the daemon runs with the render and video groups"):
        pid = machine.succeed("systemctl show -p MainPID --value rocm-llm.service").strip()
        groups = machine.succeed(f"grep '^Groups:' /proc/{pid}/status").split()[1:]
        for name in ("render", "video"):
            gid = machine.succeed(f"getent group {name} | cut -d: -f3").strip()
            assert gid in groups, f"{name} ({gid}) not in {groups}"

    with subtest("the unit is still running"):
        machine.succeed("systemctl is-active rocm-llm.service")
  '';
}
