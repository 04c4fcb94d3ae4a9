# NixOS VM test: the service with the CPU llama.cpp build and a tiny GGUF.
# Starts, lists and answers through the proxy; a changed declaration reloads
# (same daemon, same unchanged model); editing the mutable spec adds, removes
# and keeps models; an invalid edit keeps everything and shows the error;
# `systemctl stop` leaves no llama-server.
{
  pkgs,
  self,
  tinyModel,
}:
let
  model = "${tinyModel}/tiny.gguf";
in
pkgs.testers.runNixOSTest {
  name = "rocm-llm-serve";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      virtualisation.memorySize = 2048;
      virtualisation.cores = 2;
      environment.systemPackages = [ pkgs.curl ];

      services.rocm-llm = {
        enable = true;
        llamaServerPackage = pkgs.llama-cpp-cpu;
        models = {
          alpha = {
            inherit model;
            default = true;
            ctx_size = 256;
            gpu_layers = 0;
          };
          beta = {
            inherit model;
            ctx_size = 512;
            gpu_layers = 0;
          };
        };
      };

      # the same machine with beta's declaration changed
      specialisation.changed.configuration = {
        services.rocm-llm.models.beta.ctx_size = lib.mkForce 384;
      };
    };

  testScript = ''
    import json
    import time

    SPEC = "/var/lib/rocm-llm/models.yaml"
    SERVER = "'^/nix/store/[^ ]*/bin/\\.?llama-server'"


    def status():
        rc, out = machine.execute("curl -sf http://127.0.0.1:8081/status")
        return json.loads(out) if rc == 0 else None


    def model(s, name):
        return (s or {}).get("models", {}).get(name)


    def ready(s, name):
        m = model(s, name)
        return bool(m and m.get("state") == "ready" and m.get("pid"))


    def wait_status(pred, what, timeout=300):
        deadline = time.monotonic() + timeout
        while True:
            s = status()
            if s is not None and pred(s):
                return s
            if time.monotonic() > deadline:
                raise Exception(f"timed out waiting for {what}; last /status: {s}")
            time.sleep(1)


    def pid(s, name):
        return model(s, name)["pid"]


    def alive(p):
        return machine.execute(f"test -e /proc/{p}")[0] == 0


    def chat(name=None):
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
        if name:
            body["model"] = name
        out = machine.succeed(
            "curl -sf http://127.0.0.1:8080/v1/chat/completions "
            "-H 'content-type: application/json' -d '" + json.dumps(body) + "'"
        )
        reply = json.loads(out)
        assert reply["choices"], reply
        return reply


    def write_spec(text):
        machine.succeed(f"cat > {SPEC}.new <<'EOF'\n{text}\nEOF\nmv -f {SPEC}.new {SPEC}")


    def main_pid():
        return machine.succeed("systemctl show -p MainPID --value rocm-llm.service").strip()


    start_all()

    with subtest("the service starts and runs both declared models"):
        machine.wait_for_unit("rocm-llm.service")
        machine.wait_for_open_port(8080)
        machine.wait_for_open_port(8081)
        s = wait_status(lambda s: ready(s, "alpha") and ready(s, "beta"), "alpha and beta ready")
        machine.succeed("test -f /var/lib/rocm-llm/models.yaml")
        machine.succeed("cmp /etc/rocm-llm/models.yaml /var/lib/rocm-llm/models.yaml")

    with subtest("/v1/models lists the models"):
        listed = json.loads(machine.succeed("curl -sf http://127.0.0.1:8080/v1/models"))
        ids = {m["id"] for m in listed["data"]}
        assert {"alpha", "beta"} <= ids, ids

    with subtest("a chat completion answers through the proxy"):
        chat("alpha")
        chat("beta")
        chat()  # no model: the default one

    with subtest("a changed declaration reloads instead of restarting"):
        s = status()
        daemon, alpha, beta = main_pid(), pid(s, "alpha"), pid(s, "beta")
        machine.succeed("/run/current-system/specialisation/changed/bin/switch-to-configuration test")
        s = wait_status(
            lambda s: ready(s, "beta") and pid(s, "beta") != beta, "beta restarted with ctx_size 384"
        )
        assert main_pid() == daemon, "the daemon was restarted, not reloaded"
        assert pid(s, "alpha") == alpha, "alpha was restarted although unchanged"
        machine.succeed(f"grep -q 'ctx_size: 384' {SPEC}")

    with subtest("editing the mutable spec adds, removes and keeps models"):
        s = status()
        alpha, beta = pid(s, "alpha"), pid(s, "beta")
        write_spec(
            "models:\n"
            "  alpha:\n"
            "    model: ${model}\n"
            "    default: true\n"
            "    ctx_size: 256\n"
            "    gpu_layers: 0\n"
            "  gamma:\n"
            "    model: ${model}\n"
            "    ctx_size: 320\n"
            "    gpu_layers: 0\n"
        )
        s = wait_status(
            lambda s: ready(s, "gamma") and not ready(s, "beta"), "gamma ready and beta gone"
        )
        assert pid(s, "alpha") == alpha, "alpha was restarted although unchanged"
        deadline = time.monotonic() + 120
        while alive(beta):
            assert time.monotonic() < deadline, f"beta's llama-server {beta} still runs"
            time.sleep(1)
        chat("gamma")
        count = machine.succeed(f"pgrep -c -f {SERVER}").strip()
        assert count == "2", f"expected 2 llama-server processes, found {count}"

    with subtest("an invalid edit keeps the old state and /status shows the error"):
        s = status()
        before = {n: pid(s, n) for n in ("alpha", "gamma")}
        write_spec("models: [this is not a spec")

        def failed(s):
            lr = s.get("last_reload") or {}
            return lr.get("ok") is False or bool(lr.get("error"))

        s = wait_status(failed, "the failed reload in /status", timeout=60)
        print("last_reload after the invalid edit:", json.dumps(s["last_reload"]))
        assert {n: pid(s, n) for n in before} == before
        # a reload (SIGHUP) neither loses the edit nor the running models
        machine.succeed("systemctl reload rocm-llm.service")
        s = wait_status(failed, "the failed reload in /status after SIGHUP", timeout=60)
        assert {n: pid(s, n) for n in before} == before
        assert ready(s, "alpha") and ready(s, "gamma")
        machine.succeed(f"grep -q 'this is not a spec' {SPEC}")
        machine.succeed("systemctl is-active rocm-llm.service")
        chat("alpha")

    with subtest("systemctl stop leaves no llama-server behind"):
        pids = list(before.values())
        machine.succeed("systemctl stop rocm-llm.service")
        machine.fail(f"pgrep -f {SERVER}")
        for p in pids:
            assert not alive(p), f"llama-server {p} survived the stop"
  '';
}
