"""Serving real HTTP traffic: what the endpoint picker and the live cluster's fronts share.

:mod:`.openai` reads OpenAI completions and chat request bodies, :mod:`.tokenizer`
turns their prompts into token ids, :mod:`.headers` names the headers the picker
sets and the fronts read, and :mod:`.served` builds the :class:`~runtime.Request`
of a served prompt (its block hashes by :func:`runtime.cache.prefix.token_block_hashes`).
"""
