"""Real answers from SmolLM2-135M-Instruct through rocm-llm, with the official `openai` client.

Run by tests/real_model.rs as
    $ROCM_LLM_TEST_PYTHON tests/openai_real_model.py answers BASE_URL MODEL
    $ROCM_LLM_TEST_PYTHON tests/openai_real_model.py load BASE_URL MODEL CLIENTS

`answers` checks a greedy answer, that streaming gives the same text, and a
JSON-schema constrained answer, then prints `ok`.

`load` runs CLIENTS threads that stream the greedy question again and again
until a line `stop` arrives on stdin (or 400 requests / 240 s, so that it
always ends). Each finished request prints one JSON line
`{"ok": bool, "text": ..., "error": ...}`; the last line is
`{"summary": {"ok": N, "failed": M}}`.
"""

import json
import sys
import threading
import time

import openai
import pydantic

QUESTION = "What is the capital of France? Answer in one sentence."
GREEDY = {"temperature": 0, "seed": 42, "max_tokens": 48}


def client_for(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="no-key", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, model: str, stream: bool) -> tuple[str, str]:
    """The answer's text and finish reason, streamed or not."""
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, **GREEDY)
        return r.choices[0].message.content or "", r.choices[0].finish_reason
    text, finish = [], []
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **GREEDY):
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(finish) == 1, f"expected one finish_reason, got {finish}"
    return "".join(text), finish[0]


class Capital(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    country: str
    capital: str


def answers(base: str, model: str) -> None:
    client = client_for(base)

    plain, finish = ask(client, model, stream=False)
    assert "Paris" in plain, f"greedy answer without Paris: {plain!r}"
    assert finish == "stop", f"the answer did not end by itself ({finish}): {plain!r}"

    streamed, finish = ask(client, model, stream=True)
    assert streamed == plain, f"streamed {streamed!r} differs from plain {plain!r}"
    assert finish == "stop", finish

    # llama-server turns the schema into a grammar; the proxy must pass
    # response_format through untouched for this to hold.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "strict": True, "schema": Capital.model_json_schema()},
        },
        **GREEDY | {"max_tokens": 64},
    )
    raw = r.choices[0].message.content or ""
    parsed = Capital.model_validate_json(raw)  # raises unless it matches the schema
    assert parsed.capital.strip(), raw

    print(f"plain: {plain!r}", file=sys.stderr)
    print(f"json: {raw!r}", file=sys.stderr)
    print("ok")


def load(base: str, model: str, clients: int) -> None:
    client = client_for(base)
    stop = threading.Event()
    lock = threading.Lock()
    tally = {"ok": 0, "failed": 0}
    started = time.monotonic()

    def report(line: dict) -> None:
        with lock:
            tally["ok" if line["ok"] else "failed"] += 1
            print(json.dumps(line), flush=True)
            if tally["ok"] + tally["failed"] >= 400:
                stop.set()

    def worker() -> None:
        while not stop.is_set() and time.monotonic() - started < 240:
            try:
                text, finish = ask(client, model, stream=True)
                ok = "Paris" in text and finish == "stop"
                report({"ok": ok, "text": text, "error": None if ok else f"finish_reason {finish}"})
            except Exception as e:  # every failure is reported, none is retried
                report({"ok": False, "text": "", "error": f"{type(e).__name__}: {e}"})

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()
    for t in threads:
        t.join(timeout=130)
    print(json.dumps({"summary": tally}), flush=True)


def main() -> None:
    mode, base, model = sys.argv[1:4]
    if mode == "answers":
        answers(base, model)
    elif mode == "load":
        load(base, model, int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
