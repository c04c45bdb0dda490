"""Steering through the OpenAI routes of the keyed server: completions, chat and streams equal the
offline engine's answers, the prefix cache never crosses steering, and a mixed load of 320
requests on 2 slots equals offline and is counted on /metrics."""

import asyncio
import random
import time

from offline_references import (
    CHAT_PROMPTS,
    COMPLETION_PROMPTS,
    LOAD_PROMPTS,
    LONG_PROMPT,
    MAX_TOKENS,
    SPECS,
    key,
)
from servers import chat, complete

SERVER = "keyed"
LOAD_SPECS = list(SPECS)
LOAD_REQUESTS = 320
LOAD_CONCURRENCY = 32


def test_completions_equal_offline(server, client, model_name):
    refs = server.refs
    differs = {name: False for name in SPECS if name != "none"}
    for prompt in COMPLETION_PROMPTS:
        plain = refs[key("completion", prompt, "none")]
        for name, spec in SPECS.items():
            got = complete(client, model_name, prompt, spec).choices[0].text
            assert got == refs[key("completion", prompt, name)], (prompt, name)
            if name != "none" and got != plain:
                differs[name] = True
    assert all(differs.values()), f"every spec must change some output: {differs}"


def test_chat_equal_offline(server, client, model_name):
    refs = server.refs
    for prompt in CHAT_PROMPTS:
        for name in ("none", "v0", "v2-json-normpres"):
            got = chat(client, model_name, prompt, SPECS[name]).choices[0].message.content
            assert got == refs[key("chat", prompt, name)], (prompt, name)
    assert any(refs[key("chat", p, "v0")] != refs[key("chat", p, "none")] for p in CHAT_PROMPTS)


def test_streaming_gives_the_same_text(server, client, model_name):
    refs = server.refs
    for name in ("none", "v1-layers-generated", "v0+v3-json-split"):
        prompt = COMPLETION_PROMPTS[1]
        chunks = complete(client, model_name, prompt, SPECS[name], stream=True)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == refs[key("completion", prompt, name)]
    for name in ("none", "v0"):
        prompt = CHAT_PROMPTS[0]
        chunks = chat(client, model_name, prompt, SPECS[name], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == refs[key("chat", prompt, name)]


def test_prefix_cache_isolated_over_http(server, client, model_name):
    before = server.metrics().get("vllm:prefix_cache_hits_total", 0.0)
    for name in ("v0", "none", "v2-json-normpres", "v0", "none", "v3-last-prompt", "v2-json-normpres"):
        got = complete(client, model_name, LONG_PROMPT, SPECS[name]).choices[0].text
        assert got == server.refs[key("completion", LONG_PROMPT, name)], name
    assert server.metrics()["vllm:prefix_cache_hits_total"] > before, "repeats must have hit the prefix cache"


def test_mixed_load_equals_offline_and_counts(server, model_name):
    from openai import AsyncOpenAI

    rng = random.Random(7)
    plan = [(rng.choice(LOAD_PROMPTS), rng.choice(LOAD_SPECS), i % 8 == 0) for i in range(LOAD_REQUESTS)]
    steered = sum(1 for _, spec, _ in plan if spec != "none")
    before = server.metrics()
    seen_in_flight = []

    async def run():
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=120)
        queue = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        failures, mismatches, done = [], [], asyncio.Event()

        async def one(prompt, spec, stream):
            extra = {"vllm_xargs": SPECS[spec]} if SPECS[spec] else {}
            kw = dict(model=model_name, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=extra)
            if stream:
                return "".join([c.choices[0].text async for c in await client.completions.create(stream=True, **kw)
                                if c.choices])
            return (await client.completions.create(**kw)).choices[0].text

        async def worker():
            while not queue.empty():
                prompt, spec, stream = queue.get_nowait()
                try:
                    text = await one(prompt, spec, stream)
                except Exception as exc:  # counted, reported below
                    failures.append((spec, repr(exc)))
                    continue
                if text != server.refs[key("completion", prompt, spec)]:
                    mismatches.append((prompt, spec, text))

        async def scrape():
            while not done.is_set():
                m = await asyncio.to_thread(server.metrics)
                seen_in_flight.append(m["cast_steering_vectors_in_flight"])
                await asyncio.sleep(0.2)

        scraper = asyncio.create_task(scrape())
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY))), timeout=240)
        done.set()
        await scraper
        await client.close()
        return failures, mismatches

    t0 = time.monotonic()
    failures, mismatches = asyncio.run(run())
    elapsed = time.monotonic() - t0
    assert not failures, failures[:5]
    assert not mismatches, f"{len(mismatches)} responses differ from offline, e.g. {mismatches[:3]}"
    assert server.healthy()
    after = server.metrics()
    delta = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("cast_steering_")}
    assert delta["cast_steering_requests_total"] == steered
    assert delta["cast_steering_rejected_requests_total"] == 0
    assert delta["cast_steering_slot_loads_total"] > 0
    assert delta["cast_steering_slot_evictions_total"] > 0, "5 steering configs on 2 slots must evict"
    assert delta["cast_steering_slot_waits_total"] > 0, "5 steering configs on 2 slots must make requests wait"
    assert after["cast_steering_requests_in_flight"] == 0 and after["cast_steering_vectors_in_flight"] == 0
    assert after["cast_steering_slots"] == 2
    assert max(seen_in_flight) >= 2, seen_in_flight
    print(f"mixed load: {LOAD_REQUESTS} requests in {elapsed:.1f}s, {steered} steered, "
          f"evictions +{delta['cast_steering_slot_evictions_total']:.0f}, "
          f"waits +{delta['cast_steering_slot_waits_total']:.0f}")
