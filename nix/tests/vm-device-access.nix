# NixOS VM test: the unit may open /dev/kfd and /dev/dri (DeviceAllow,
# render/video groups), and with the default llama-server (this flake's ROCm
# build) it serves SmolLM2 in a VM where neither device exists: the HIP
# build finds no GPU and runs on the CPU.
{
  pkgs,
  self,
  demoModel,
}:
pkgs.testers.runNixOSTest {
  name = "rocm-llm-device-access";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 3072;
      environment.systemPackages = [ pkgs.curl ];
      services.rocm-llm = {
        enable = true;
        # the ROCm build: it starts, finds no GPU and llama.cpp falls back to
        # the CPU; only the unit's device setup is under test here
        models.smol = {
          model = demoModel;
          ctx_size = 1024;
          gpu_layers = 0;
        };
      };
    };

  testScript = ''
    import json

    machine.wait_for_unit("rocm-llm.service")
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:8081/healthz", timeout=120)

    with subtest("the ROCm build serves the model on the CPU"):
        # ready only once llama-server has loaded the model (HIP finds no
        # device and falls back to the CPU)
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:8081/status | grep -q '\"state\": \"ready\"'", timeout=600
        )
        body = json.dumps({
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            "max_tokens": 24,
            "temperature": 0,
        })
        out = machine.succeed(
            "curl -sf http://127.0.0.1:8080/v1/chat/completions "
            "-H 'content-type: application/json' -d '" + body + "'"
        )
        answer = json.loads(out)["choices"][0]["message"]["content"]
        print("smol:", answer)
        assert "Paris" in answer, answer

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
