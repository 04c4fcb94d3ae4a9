# NixOS VM test: the service with the CPU llama.cpp build and SmolLM2-135M
# (the demo-model package), so the answers are real. In order:
#   - it starts both declared models; requests need the API key (401
#     without it), and a greedy question about France's capital says Paris;
#   - a changed declaration reloads: same daemon, same unchanged model, the
#     changed one restarted (waiting for the reload counter to rise);
#   - an edit of the mutable spec adds, removes and keeps models;
#   - specFileUpdate = "if-missing": the switch restarts the daemon (its
#     commands changed) and the edited file is kept;
#   - an invalid edit keeps everything and /status shows the error, also
#     after `systemctl reload`;
#   - a changed listen restarts the daemon, which then serves on the new
#     port only;
#   - specFile = null: the daemon reads /etc (Type=notify-reload), and a
#     changed declaration is applied by the time the switch returns;
#   - `systemctl stop` leaves no llama-server.
{
  pkgs,
  self,
  demoModel,
}:
let
  key = "vm-test-key";
  spec = "/var/lib/rocm-llm/models.yaml";
in
pkgs.testers.runNixOSTest {
  name = "rocm-llm-serve";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      virtualisation.memorySize = 3072;
      virtualisation.cores = 2;
      environment.systemPackages = [ pkgs.curl ];
      environment.etc."rocm-llm-test/api-key".text = key;

      services.rocm-llm = {
        enable = true;
        llamaServerPackage = pkgs.rocm-llm-llama-cpp-cpu;
        specFile = spec;
        apiKeyFile = "/etc/rocm-llm-test/api-key";
        models = {
          alpha = {
            model = demoModel;
            default = true;
            ctx_size = 1024;
            gpu_layers = 0;
            jinja = true;
          };
          beta = {
            model = demoModel;
            ctx_size = 512;
            gpu_layers = 0;
          };
        };
      };

      # the same machine with one thing changed each
      specialisation = {
        changed.configuration = {
          services.rocm-llm.models.beta.ctx_size = lib.mkForce 384;
        };
        ifMissing.configuration = {
          services.rocm-llm.models.beta.ctx_size = lib.mkForce 384;
          services.rocm-llm.specFileUpdate = "if-missing";
        };
        listen.configuration = {
          services.rocm-llm.models.beta.ctx_size = lib.mkForce 384;
          services.rocm-llm.listen = lib.mkForce "127.0.0.1:8090";
        };
        declarative.configuration = {
          services.rocm-llm.specFile = lib.mkForce null;
        };
        declarativeChanged.configuration = {
          services.rocm-llm.specFile = lib.mkForce null;
          services.rocm-llm.models.beta.ctx_size = lib.mkForce 448;
        };
      };
    };

  testScript = ''
    import json
    import time

    SPEC = "${spec}"
    KEY = "${key}"
    MODEL = "${demoModel}"
    SERVER = "'^/nix/store/[^ ]*/bin/\\.?llama-server'"
    AUTH = f"-H 'authorization: Bearer {KEY}'"
    port = 8080


    def status():
        rc, out = machine.execute(f"curl -sf {AUTH} http://127.0.0.1:8081/status")
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


    def request(body, auth=True):
        return machine.execute(
            f"curl -s -o /tmp/reply -w '%{{http_code}}' {AUTH if auth else '''} "
            f"http://127.0.0.1:{port}/v1/chat/completions "
            "-H 'content-type: application/json' -d '" + json.dumps(body) + "'"
            "; echo; cat /tmp/reply"
        )[1]


    def chat(name=None, question="Hello", max_tokens=8):
        body = {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 1,
        }
        if name:
            body["model"] = name
        code, _, text = request(body).partition("\n")
        assert code == "200", f"HTTP {code}: {text}"
        reply = json.loads(text)
        return reply["choices"][0]["message"]["content"]


    def write_spec(text):
        machine.succeed(f"cat > {SPEC}.new <<'EOF'\n{text}\nEOF\nmv -f {SPEC}.new {SPEC}")


    def main_pid():
        return machine.succeed("systemctl show -p MainPID --value rocm-llm.service").strip()


    def switch(name):
        machine.succeed(f"/run/current-system/specialisation/{name}/bin/switch-to-configuration test")


    def edited_spec(with_key=True):
        key_line = "api_key_file: /run/credentials/rocm-llm.service/api-key\n" if with_key else ""
        return (
            key_line
            + "models:\n"
            "  alpha:\n"
            f"    model: {MODEL}\n"
            "    default: true\n"
            "    ctx_size: 1024\n"
            "    gpu_layers: 0\n"
            "    jinja: true\n"
            "  gamma:\n"
            f"    model: {MODEL}\n"
            "    ctx_size: 320\n"
            "    gpu_layers: 0\n"
        )


    start_all()

    with subtest("the service starts and runs both declared models"):
        machine.wait_for_unit("rocm-llm.service")
        machine.wait_for_open_port(8080)
        machine.wait_for_open_port(8081)
        s = wait_status(lambda s: ready(s, "alpha") and ready(s, "beta"), "alpha and beta ready")
        machine.succeed(f"cmp /etc/rocm-llm/models.yaml {SPEC}")

    with subtest("the API key is required, and the real model answers"):
        code = request({"messages": [{"role": "user", "content": "Hi"}]}, auth=False).split("\n")[0]
        assert code == "401", f"a request without the key got HTTP {code}"
        machine.fail("curl -sf http://127.0.0.1:8081/status")
        listed = json.loads(machine.succeed(f"curl -sf {AUTH} http://127.0.0.1:8080/v1/models"))
        ids = {m["id"] for m in listed["data"]}
        assert {"alpha", "beta"} <= ids, ids
        answer = chat("alpha", "What is the capital of France? Answer in one sentence.", 24)
        print("alpha:", answer)
        assert "Paris" in answer, answer
        assert chat("beta"), "beta gave an empty answer"
        assert chat(), "the default model gave an empty answer"

    with subtest("a changed declaration reloads instead of restarting"):
        s = status()
        daemon, alpha, beta, reloads = main_pid(), pid(s, "alpha"), pid(s, "beta"), s["reloads"]
        switch("changed")
        s = wait_status(
            lambda s: s["reloads"] > reloads and ready(s, "beta") and pid(s, "beta") != beta,
            "the reload, and beta restarted with ctx_size 384",
        )
        assert main_pid() == daemon, "the daemon was restarted, not reloaded"
        assert pid(s, "alpha") == alpha, "alpha was restarted although unchanged"
        machine.succeed(f"grep -q 'ctx_size: 384' {SPEC}")

    with subtest("editing the mutable spec adds, removes and keeps models"):
        s = status()
        alpha, beta = pid(s, "alpha"), pid(s, "beta")
        write_spec(edited_spec())
        s = wait_status(
            lambda s: ready(s, "gamma") and not ready(s, "beta"), "gamma ready and beta gone"
        )
        assert pid(s, "alpha") == alpha, "alpha was restarted although unchanged"
        deadline = time.monotonic() + 120
        while alive(beta):
            assert time.monotonic() < deadline, f"beta's llama-server {beta} still runs"
            time.sleep(1)
        assert chat("gamma")
        count = machine.succeed(f"pgrep -c -f {SERVER}").strip()
        assert count == "2", f"expected 2 llama-server processes, found {count}"

    with subtest("if-missing: the switch restarts the daemon and keeps the edited file"):
        daemon = main_pid()
        switch("ifMissing")
        machine.wait_until_succeeds(f"test \"$(systemctl show -p MainPID --value rocm-llm.service)\" != {daemon}")
        s = wait_status(lambda s: ready(s, "alpha") and ready(s, "gamma"), "alpha and gamma from the edited file")
        assert model(s, "beta") is None, "beta came back from the declaration"
        machine.succeed(f"grep -q gamma {SPEC}")

    with subtest("an invalid edit keeps the old state and /status shows the error"):
        s = status()
        before = {n: pid(s, n) for n in ("alpha", "gamma")}
        errors = s["reload_errors"]
        write_spec("models: [this is not a spec")
        s = wait_status(lambda s: s["reload_errors"] > errors, "the failed reload in /status", timeout=60)
        print("last_reload after the invalid edit:", json.dumps(s["last_reload"]))
        assert s["last_reload"]["ok"] is False and s["last_reload"]["errors"], s["last_reload"]
        assert {n: pid(s, n) for n in before} == before
        # a reload (SIGHUP) neither loses the edit nor the running models
        errors = s["reload_errors"]
        machine.succeed("systemctl reload rocm-llm.service")
        s = wait_status(lambda s: s["reload_errors"] > errors, "the failed reload after SIGHUP", timeout=60)
        assert {n: pid(s, n) for n in before} == before
        assert ready(s, "alpha") and ready(s, "gamma")
        machine.succeed(f"grep -q 'this is not a spec' {SPEC}")
        machine.succeed("systemctl is-active rocm-llm.service")
        assert chat("alpha")

    with subtest("a changed listen restarts the daemon on the new port"):
        daemon = main_pid()
        switch("listen")
        machine.wait_until_succeeds(f"test \"$(systemctl show -p MainPID --value rocm-llm.service)\" != {daemon}")
        port = 8090
        machine.wait_for_open_port(8090)
        machine.wait_for_closed_port(8080)
        # on-change: the declaration replaced the invalid file, kept as .bak
        machine.succeed(f"grep -q 'this is not a spec' {SPEC}.bak")
        wait_status(lambda s: ready(s, "alpha") and ready(s, "beta"), "the declared models again")
        assert chat("alpha")

    with subtest("specFile = null: the daemon reads /etc, a switch is applied when it returns"):
        daemon = main_pid()
        switch("declarative")
        machine.wait_until_succeeds(f"test \"$(systemctl show -p MainPID --value rocm-llm.service)\" != {daemon}")
        port = 8080
        machine.wait_for_open_port(8080)
        s = wait_status(lambda s: ready(s, "alpha") and ready(s, "beta"), "alpha and beta from /etc")
        assert s["spec"] == "/etc/rocm-llm/models.yaml", s["spec"]
        show = machine.succeed("systemctl show -p Type rocm-llm.service")
        assert "Type=notify-reload" in show, show
        daemon, generation = main_pid(), s["generation"]
        switch("declarativeChanged")
        # notify-reload: `systemctl reload` returned after RELOADING=1 and
        # READY=1, so the new generation is there already
        s = status()
        assert s["generation"] > generation, f"generation {s['generation']} after the switch returned"
        assert main_pid() == daemon, "the daemon was restarted, not reloaded"
        wait_status(lambda s: ready(s, "beta"), "beta with ctx_size 448")

    with subtest("systemctl stop leaves no llama-server behind"):
        s = status()
        pids = [pid(s, n) for n in ("alpha", "beta")]
        machine.succeed("systemctl stop rocm-llm.service")
        machine.fail(f"pgrep -f {SERVER}")
        for p in pids:
            assert not alive(p), f"llama-server {p} survived the stop"
  '';
}
