"""The official `openai` Python client against rocm-llm's endpoint.

Run by tests/proxy.rs as `$ROCM_LLM_TEST_PYTHON tests/openai_client.py BASE_URL [API_KEY]`
against a daemon serving the tiny models `a` (alias `alpha`) and `b`.
Prints `ok` and exits 0 when every check passes.
"""

import sys

import openai

MAX_TOKENS = 8


def main() -> None:
    base = sys.argv[1]
    key = sys.argv[2] if len(sys.argv) > 2 else "no-key"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "hello"}]

    ids = sorted(m.id for m in client.models.list().data)
    assert {"a", "alpha", "b"} <= set(ids), ids

    # A plain chat completion.
    r = client.chat.completions.create(model="a", messages=messages, max_tokens=MAX_TOKENS)
    assert r.object == "chat.completion", r
    assert r.choices[0].finish_reason == "length", r
    assert r.choices[0].message.role == "assistant", r
    assert r.usage is not None and r.usage.completion_tokens == MAX_TOKENS, r.usage

    # A streaming chat completion, by alias.
    stream = client.chat.completions.create(model="alpha", messages=messages, max_tokens=MAX_TOKENS, stream=True)
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(content) == MAX_TOKENS, chunks
    assert finish == ["length"], finish
    assert all(c.object == "chat.completion.chunk" for c in chunks), chunks

    # The other model, and the legacy completions route.
    c = client.completions.create(model="b", prompt="once upon", max_tokens=MAX_TOKENS)
    assert c.choices[0].finish_reason == "length", c

    # Errors arrive as the client's typed exceptions, with our message.
    try:
        client.chat.completions.create(model="nope", messages=messages, max_tokens=MAX_TOKENS)
        raise AssertionError("an unknown model must fail")
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert "available models: a, alpha, b" in str(e), str(e)

    print("ok")


if __name__ == "__main__":
    main()
