"""`lss describe`: an LLM writes N short visual descriptions of every action class (docs/method.md §3.2).

A run is paid per token and may be rate-limited or killed, so:

- every finished class is appended to the output file at once (one flushed line), and a rerun
  skips every class already there without calling the API (resume is the default);
- requests that may succeed on a second try (429, 5xx, timeouts, dropped connections) are retried
  with exponential backoff and jitter, honouring the server's Retry-After; a 429 pauses every
  worker, not just the one that got it;
- replies are validated (parsed as the prompt asks, cleaned of numbering and bullets,
  de-duplicated, counted, each short enough for CLIP's 77-token context); an invalid reply is
  re-asked a bounded number of times in the same conversation, naming what was wrong;
- a class that still fails is recorded as failed with the reason; it is not done, so the next
  run asks for it again. Errors that would hit every class (bad key, unknown model, no quota)
  stop the run at once instead of spending requests on them.

The modules, from the bottom up:

- `prompt`: versioned prompt templates (`prompts/*.yaml`) and how a class fills them in;
- `bpe`: CLIP's BPE tokenizer reimplemented without torch: token counts for the 77-token check;
- `replies`: a model reply -> the class's descriptions, or `InvalidReply` saying why not;
- `client`: one chat-completion request against an OpenAI-compatible server, its errors sorted
  into retry / class / fatal (the only module importing `openai`);
- `records`: the descriptions file (JSON Lines), also written by the synthetic dataset and read
  by `lss build-concepts`;
- `calls`: asking for one class: retries with backoff, re-asks, the shared rate gate and the
  request shape a server accepts (`RequestAdapter`);
- `run`: planning (also what `--dry-run` shows) and running: the output lock, the worker pool,
  the tally and the summary.
"""
