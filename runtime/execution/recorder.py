"""What an execution (simulated or live) writes down about finished requests."""

from __future__ import annotations

from typing import Any

from runtime.execution.job import Job

# The prefill engine produces the first token when the request's last chunk
# finishes, so ``prefill_end_s`` and ``first_token_s`` hold the same time.
TIMELINE_COLUMNS = (
    "request_id", "agent_id", "turn", "hit_tokens", "appended_tokens", "gen_tokens",
    "prefill_engine", "decode_engine", "decode_share", "arrival_s", "decision_s",
    "pe_read_start_s", "pe_read_end_s", "de_read_start_s", "de_read_end_s",
    "prefill_start_s", "prefill_end_s", "first_token_s", "finish_s",
)


class Recorder:
    """Columns of per-request facts, appended when a request finishes."""

    def __init__(self, timeline: bool) -> None:
        self.timeline = timeline
        self.arrival: list[float] = []
        self.first_token: list[float] = []
        self.finish: list[float] = []
        self.gen: list[int] = []
        self.prompt: list[int] = []
        self.hit: list[int] = []
        self.slo_class: list[str] = []
        self.agent_first: dict[int, float] = {}
        self.agent_last: dict[int, float] = {}
        self.rows: list[tuple[Any, ...]] = []

    def arrive(self, job: Job) -> None:
        agent = job.request.agent_id
        if agent not in self.agent_first:
            self.agent_first[agent] = job.request.arrival_s

    def done(self, job: Job) -> None:
        r = job.request
        self.arrival.append(r.arrival_s)
        self.first_token.append(job.t_first_token)
        self.finish.append(job.t_finish)
        self.gen.append(r.gen_tokens)
        self.prompt.append(r.prompt_tokens)
        self.hit.append(r.hit_tokens)
        self.slo_class.append(r.slo_class)
        self.agent_last[r.agent_id] = job.t_finish
        if self.timeline:
            self.rows.append((
                r.request_id, r.agent_id, r.turn, r.hit_tokens, r.appended_tokens, r.gen_tokens,
                job.pe, job.de, job.share, r.arrival_s, job.t_decision,
                job.t_pe_read[0], job.t_pe_read[1], job.t_de_read[0], job.t_de_read[1],
                job.t_prefill_start, job.t_first_token, job.t_first_token, job.t_finish,
            ))
