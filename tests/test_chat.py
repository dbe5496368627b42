"""Chat: the KV cache carries over between turns and gives exactly what a fresh generation gives; the oldest
turns are dropped (system prompt kept) when the context fills; a cancelled reply stays in the history."""

from __future__ import annotations

import threading

import pytest

import edge


def reply(events) -> tuple[edge.Done, list]:
    events = list(events)
    return events[-1], events


def fresh_ids(model, chat: edge.Chat, max_tokens: int) -> tuple[int, ...]:
    """The reply to the chat's history computed from scratch, with no cache reuse."""
    system = [{"role": "system", "content": chat.system}] if chat.system else []
    done = list(model.stream(system + chat.messages[:-1], max_tokens=max_tokens))[-1]
    return done.token_ids


@pytest.fixture(scope="module")
def model(mlx_models):
    return edge.load(mlx_models["qwen2"])


def test_second_turn_reuses_cache_and_equals_fresh_generation(model):
    chat = edge.Chat(model, system="Be brief.", sampling=edge.Sampling(max_tokens=12))
    first, _ = reply(chat.send("Hello! How are you today?"))
    assert first.stats.reused_tokens == 0
    assert fresh_ids(model, chat, 12) == first.token_ids
    second, _ = reply(chat.send("What is the capital of France?"))
    s = second.stats
    assert s.reused_tokens > first.stats.prompt_tokens - 2  # all of turn one, up to the re-tokenized reply end
    assert s.prefill_tokens == s.prompt_tokens - s.reused_tokens and s.prefill_tokens < s.prompt_tokens // 2 + 10
    assert fresh_ids(model, chat, 12) == second.token_ids
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.last_stats is s


def test_regenerate_and_truncate(model):
    chat = edge.Chat(model, sampling=edge.Sampling(max_tokens=8))
    first, _ = reply(chat.send("Tell me about the sea."))
    again, _ = reply(chat.regenerate())
    assert again.token_ids == first.token_ids and len(chat.messages) == 2
    chat.truncate(0)
    done, _ = reply(chat.send("Once upon a time"))
    assert fresh_ids(model, chat, 8) == done.token_ids


def test_overflowing_history_drops_oldest_turns_keeps_system(mlx_models):
    model = edge.load(mlx_models["llama"], context=96)
    chat = edge.Chat(model, system="You are a robot.", sampling=edge.Sampling(max_tokens=10))
    notices = []
    for i in range(8):
        last, events = reply(chat.send(f"Message number {i}: the quick brown fox jumps over the lazy dog."))
        notices += [e for e in events if isinstance(e, edge.Notice)]
        assert last.stats.prompt_tokens + 10 <= 96
    assert notices and "dropped" in notices[0].message
    assert chat.messages[0]["role"] == "user" and "Message number 0" not in chat.messages[0]["content"]
    rendered = model.tokenizer.decode(chat._render())
    assert rendered.startswith("<|im_start|>system\nYou are a robot.")
    assert fresh_ids(model, chat, 10) == last.token_ids


def test_a_message_longer_than_the_context_is_refused(mlx_models):
    model = edge.load(mlx_models["llama"], context=48)
    chat = edge.Chat(model)
    with pytest.raises(edge.EdgeError, match="shorten"):
        list(chat.send("word " * 200))
    assert chat.messages == []


def test_cancel_keeps_partial_reply_and_next_turn_is_exact(model):
    chat = edge.Chat(model, sampling=edge.Sampling(max_tokens=200))
    events = []
    for event in chat.send("Once upon a time"):
        events.append(event)
        if len(events) == 2:
            threading.Thread(target=chat.cancel).start()
            threading.Event().wait(0.05)
    done = events[-1]
    assert done.reason in ("cancelled", "eos")
    assert chat.messages[-1] == {"role": "assistant", "content": done.text}
    nxt, _ = reply(chat.send("And then?", max_tokens=8))
    assert fresh_ids(model, chat, 8) == nxt.token_ids


def test_consumer_that_stops_early_leaves_a_consistent_cache(model):
    chat = edge.Chat(model, sampling=edge.Sampling(max_tokens=50))
    stream = chat.send("Hello! How are you today?")
    next(stream)
    stream.close()  # the app dropped the generator mid-reply
    assert chat.messages[-1]["role"] == "assistant"
    nxt, _ = reply(chat.send("Paris?", max_tokens=8))
    assert fresh_ids(model, chat, 8) == nxt.token_ids
