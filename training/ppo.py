"""PPO-ptx, InstructGPT's step 3, on accelerate: rollouts, KL-shaped rewards, clipped updates.

TRL's PPO trainer is experimental and has no pretraining mix, so this loop is the
project's own, built on the tested pieces of ``training.ppo_math``. One step:

1. Rollout (no gradient): draw ``rollout_prompts`` prompts (seeded by the step, so a
   resumed run draws the same ones), render them as the SFT data was (a chat through
   the chat template with the generation prompt, a plain prompt as it is), and sample
   one response each from the policy. A response ends at its first end-of-sequence
   token (kept, it is a choice of the policy); what follows is padding.
2. Score: the reward model reads (prompt, response) rendered exactly as in its training
   (``reward_trainer.render``), and its stored bias is subtracted, so the SFT
   demonstrations score about 0. Per response token: the log-probability under the
   policy and under the frozen SFT reference, and the value model's estimate.
3. Rewards: -beta * (log pi_RL - log pi_SFT) per token, the score at the last token;
   GAE (discount ``gamma``, ``lam``); advantages whitened over the batch.
4. Update: ``ppo_epochs`` passes over the rollouts in minibatches: clipped policy loss,
   clipped value loss (times ``vf_coef``), plus ``ptx_coef`` times the next-token loss
   on a batch of pretraining-mix texts. One AdamW over the policy and the value model
   (each with its own learning rate and gradient clipping).

The value model is a sequence classifier (initialised from the reward model, as in
InstructGPT) whose ``score`` head is applied to every position's hidden state. It reads
the policy's token ids, so it must share the policy's tokenizer; the reward model reads
text and may have its own.

Checkpoints hold the policy, the value model, the optimizer and the step: written to a
temporary folder, renamed, flushed and completed by the marker of
``training.checkpoints``, written last (resuming only takes marked folders). NaN or Inf
in a score, a log-probability or a loss stops the run with an error naming it.
"""

import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)

from modelhub.ml.generation import pad_rows, until_first_eos
from training import ppo_math
from training.checkpoints import (
    fsync_path,
    is_complete,
    mark_complete,
    read_marker,
    save_final_model,
)
from training.datasets.formats import is_chat
from training.ppo_config import PPOConfig
from training.reward_trainer import (
    BIAS_KEY,
    Prompt,
    _disable_dropout,
    demonstration_pairs,
    load_reward_model,
    load_tokenizer,
    read_rows,
    render,
    score_responses,
)

logger = logging.getLogger(__name__)

# (prompts, response texts, response token ids) -> scores [B]: a reward in place of the
# reward model (tests and experiments with a known reward).
RewardFunction = Callable[[list[Prompt], list[str], list[list[int]]], torch.Tensor]


# -- Data -----------------------------------------------------------------------------------

def load_prompts(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[Prompt]:
    """Return the prompts of a prompts snapshot (rows with a "prompt": text or chat)."""
    prompts = []
    for number, row in enumerate(read_rows(source), start=1):
        prompt = row.get("prompt") if isinstance(row, Mapping) else None
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt)
        elif is_chat(prompt):
            prompts.append([{"role": m["role"], "content": m["content"]} for m in prompt])
        else:
            raise ValueError(f"prompts row {number}: 'prompt' must be a non-empty string or a "
                             f"list of {{role, content}} messages")
    if not prompts:
        raise ValueError("the prompts file holds no prompt")
    return prompts


def load_ptx_texts(source: str | os.PathLike | Iterable[Mapping[str, Any]],
                   tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Return the pretraining-mix texts: {"text"} rows, or SFT rows rendered as in SFT."""
    texts = []
    for number, row in enumerate(read_rows(source), start=1):
        if isinstance(row.get("text"), str):
            texts.append(row["text"])
            continue
        try:
            [(prompt, completion)] = demonstration_pairs([row])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"pretraining-mix row {number}: needs 'text', or 'prompt' and "
                             f"'completion'") from None
        texts.append(render(tokenizer, prompt, completion)[0])
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("the pretraining-mix file holds no text")
    return texts


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, max_length: int) -> list[int]:
    """Return the tokens the policy continues: as in SFT (TRL's prompt/completion forms)."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
    elif tokenizer.chat_template:
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    else:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "
        ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    if not ids:
        start = tokenizer.bos_token_id
        ids = [start if start is not None else tokenizer.eos_token_id]
    return ids[-max_length:]  # the end holds the question and the generation prompt


def _positions(attention: torch.Tensor) -> torch.Tensor:
    # Left-padded rows start counting at their first real token, as generate() does.
    return (attention.long().cumsum(dim=1) - 1).clamp(min=0)


def _seed_for(seed: int, step: int, process: int, purpose: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + process * 104_729 + purpose) % 2**63


# -- Models ---------------------------------------------------------------------------------

class TokenValues(torch.nn.Module):
    """A sequence classifier's score head read at every position: the value model.

    A module of its own so that the distributed wrapper sees (and averages the gradients
    of) the pass that goes around the classifier's own forward.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        if not isinstance(getattr(model, "score", None), torch.nn.Module):
            raise ValueError("the value model needs a 'score' head to read a value at every "
                             "token")
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """Return the value at every position [B, T] (float32)."""
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False).last_hidden_state
        return self.model.score(hidden).squeeze(-1).float()


def _response_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     query_width: int, temperature: float) -> torch.Tensor:
    """Return the logits [B, R, V] that predicted each response token."""
    # Only the positions that predict the response go through the LM head: with a long
    # prompt and a large vocabulary the full [B, T, V] logits would dominate memory.
    keep = input_ids.shape[1] - query_width + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids, use_cache=False, logits_to_keep=keep).logits
    return logits[:, :-1].float() / temperature


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(F.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def _same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a.get_vocab() == b.get_vocab()


class PPOTrainer:
    """Train a policy with PPO-ptx; ``train()`` runs to ``config.max_steps`` and saves it."""

    def __init__(self, config: PPOConfig, prompts: Sequence[Prompt], *,
                 ptx_texts: Sequence[str] | None = None,
                 reward_function: RewardFunction | None = None,
                 callbacks: Sequence[TrainerCallback] | None = None,
                 eval_prompts: Sequence[Prompt] | None = None):
        self.config = config
        self.prompts = list(prompts)
        self.eval_prompts = list(eval_prompts or [])
        if not self.prompts:
            raise ValueError("PPO needs prompts")
        self.callbacks = list(callbacks or [])
        self.reward_function = reward_function
        bf16 = config.use_bf16()
        self.accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no",
                                       cpu=not torch.cuda.is_available())
        transformers.set_seed(config.seed)

        self.tokenizer = load_tokenizer(config.model_path)
        # Trained models keep float32 weights (autocast runs the maths in bf16 when on);
        # the frozen ones are only read, in bf16 then: half the memory.
        frozen = torch.bfloat16 if bf16 else torch.float32
        self.policy = AutoModelForCausalLM.from_pretrained(config.model_path,
                                                           dtype=torch.float32)
        self.reference = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=frozen)
        value_path = config.value_model_path or config.reward_model_path
        if not _same_vocabulary(self.tokenizer, load_tokenizer(value_path)):
            raise ValueError(f"the value model ({value_path}) must share the policy's tokenizer: "
                             f"it reads the policy's tokens")
        try:
            self.value = TokenValues(load_reward_model(value_path, self.tokenizer,
                                                       dtype=torch.float32))
        except ValueError as error:
            raise ValueError(f"{value_path}: {error}") from None
        self.reward_model = self.reward_tokenizer = None
        self.reward_bias = 0.0
        if reward_function is None:
            self.reward_tokenizer = load_tokenizer(config.reward_model_path)
            self.reward_model = load_reward_model(config.reward_model_path,
                                                  self.reward_tokenizer, dtype=frozen)
            self.reward_bias = float(getattr(self.reward_model.config, BIAS_KEY, 0.0) or 0.0)
            # The reward model reads the rendered text, cut on the left to what it holds.
            self.reward_length = config.max_prompt_length + config.response_length + 16
            limit = getattr(self.reward_model.config, "max_position_embeddings", None)
            self.reward_length = min(self.reward_length, limit or self.reward_length)
        for model in (self.policy, self.reference, self.value.model, self.reward_model):
            if model is not None:
                _disable_dropout(model)  # ratios and values compare passes: no noise
        for model in (self.reference, self.reward_model):
            if model is not None:
                model.requires_grad_(False).eval()
        if config.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
            self.value.model.gradient_checkpointing_enable()

        eos = self.policy.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        # Prompt and response must fit the model's positions (the end of a prompt is kept).
        positions = getattr(self.policy.config, "max_position_embeddings", None)
        self.prompt_limit = config.max_prompt_length
        if positions:
            if positions <= config.response_length:
                raise ValueError(f"response_length ({config.response_length}) leaves no room "
                                 f"for a prompt in the model's {positions} positions")
            self.prompt_limit = min(self.prompt_limit, positions - config.response_length)
        self.ptx_ids: list[list[int]] = []
        if ptx_texts is None and config.ptx_data_path:
            ptx_texts = load_ptx_texts(config.ptx_data_path, self.tokenizer)
        if ptx_texts and config.ptx_coef > 0:
            encoded = self.tokenizer(list(ptx_texts), add_special_tokens=False,
                                     verbose=False)["input_ids"]
            length = min(config.ptx_length, positions or config.ptx_length)
            self.ptx_ids = [ids[:length] for ids in encoded if len(ids) >= 2]
            if not self.ptx_ids:
                raise ValueError("no pretraining-mix text has two tokens or more")

        optimizer = torch.optim.AdamW([
            {"params": [p for p in self.policy.parameters() if p.requires_grad],
             "lr": config.learning_rate},
            {"params": [p for p in self.value.parameters() if p.requires_grad],
             "lr": config.value_learning_rate or config.learning_rate},
        ], eps=1e-5)
        self.policy, self.value, self.optimizer = self.accelerator.prepare(
            self.policy, self.value, optimizer)
        device = self.accelerator.device
        self.reference.to(device)
        if self.reward_model is not None:
            self.reward_model.to(device)
        self.state = TrainerState(max_steps=config.max_steps)
        self.control = TrainerControl()
        self.log_history: list[dict[str, float]] = []

    # -- One step ---------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, step: int) -> dict[str, Any]:
        """Sample responses to this step's prompts and compute everything the update needs."""
        config, accelerator = self.config, self.accelerator
        rng = random.Random(_seed_for(config.seed, step, accelerator.process_index, 0))
        prompts = [self.prompts[rng.randrange(len(self.prompts))]
                   for _ in range(config.rollout_prompts)]
        batch = self._sample(prompts, _seed_for(config.seed, step, accelerator.process_index, 1),
                             step)
        mask, width = batch["mask"], batch["width"]
        with accelerator.autocast():
            values = accelerator.unwrap_model(self.value)(
                batch["input_ids"], batch["attention"], batch["positions"])[:, width - 1:-1]
        rewards = ppo_math.shaped_rewards(batch["scores"], batch["logprobs"],
                                          batch.pop("ref_logprobs"), mask, beta=config.kl_coef)
        if config.whiten_rewards:
            rewards = ppo_math.whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_math.gae(rewards, values, mask, gamma=config.gamma,
                                           lam=config.lam)
        batch.update(values=values, advantages=ppo_math.whiten(advantages, mask),
                     returns=returns)
        return batch

    @torch.no_grad()
    def _sample(self, prompts: list[Prompt], seed: int, step: int) -> dict[str, Any]:
        """Sample one response per prompt; return tokens, log-probs (policy and reference),
        scores less the bias, KL per response, lengths and texts."""
        config, accelerator = self.config, self.accelerator
        pad = self.tokenizer.pad_token_id
        queries, query_attention = pad_rows(
            [prompt_ids(self.tokenizer, p, self.prompt_limit) for p in prompts], pad, left=True)
        device = accelerator.device
        queries, query_attention = queries.to(device), query_attention.to(device)
        policy = accelerator.unwrap_model(self.policy)
        torch.manual_seed(seed)
        with accelerator.autocast():
            output = policy.generate(
                input_ids=queries, attention_mask=query_attention, do_sample=True,
                temperature=config.temperature, top_k=0, top_p=1.0,
                max_new_tokens=config.response_length, min_new_tokens=1,
                eos_token_id=self.eos_ids or None, pad_token_id=pad, use_cache=True)
        width = queries.shape[1]
        responses = output[:, width:]
        mask = until_first_eos(responses, self.eos_ids)
        responses = torch.where(mask, responses, pad)
        input_ids = torch.cat([queries, responses], dim=1)
        attention = torch.cat([query_attention, mask.long()], dim=1)
        positions = _positions(attention)

        with accelerator.autocast():
            logits = _response_logits(policy, input_ids, attention, positions, width,
                                      config.temperature)
            logprobs = _token_logprobs(logits, responses)
            del logits
            ref_logits = _response_logits(self.reference, input_ids, attention, positions,
                                          width, config.temperature)
            ref_logprobs = _token_logprobs(ref_logits, responses)
            del ref_logits

        id_lists = [row[m].tolist() for row, m in zip(responses.cpu(), mask.cpu(), strict=True)]
        texts = [t.strip() for t in self.tokenizer.batch_decode(id_lists,
                                                                skip_special_tokens=True)]
        scores = self._scores(prompts, texts, id_lists).to(device)
        ended = torch.isin(responses, torch.tensor(self.eos_ids or [-1], device=device)).any(1)
        if config.missing_eos_penalty is not None:
            scores = torch.where(ended, scores, scores - config.missing_eos_penalty)
        ppo_math.check_finite("the reward model's score", scores, step=step)
        ppo_math.check_finite("the policy's log-probabilities",
                              torch.where(mask, logprobs, 0.0), step=step)
        kl = ppo_math.per_token_kl(logprobs, ref_logprobs, mask).sum(dim=1)
        return {
            "input_ids": input_ids, "attention": attention, "positions": positions,
            "responses": responses, "mask": mask, "width": width, "logprobs": logprobs,
            "ref_logprobs": ref_logprobs, "scores": scores, "kl": kl,
            "lengths": mask.sum(dim=1).float(), "ended": ended.float(), "texts": texts,
        }

    def evaluate(self, step: int) -> dict[str, float]:
        """Score the policy's responses to the held-out prompts: the same prompts and the
        same sampling seeds at every evaluation, so that the figures compare across steps."""
        config, accelerator = self.config, self.accelerator
        prompts = self.eval_prompts[:config.eval_max_prompts]
        # Every process takes as many prompts (wrapping round), so all gather alike.
        share = -(-len(prompts) // accelerator.num_processes)
        mine = [prompts[(accelerator.process_index * share + i) % len(prompts)]
                for i in range(share)]
        gathered: dict[str, list[torch.Tensor]] = {"scores": [], "kl": [], "lengths": []}
        for chunk, start in enumerate(range(0, share, config.rollout_prompts)):
            seed = _seed_for(config.seed, 0, accelerator.process_index, 1_000 + chunk)
            batch = self._sample(mine[start:start + config.rollout_prompts], seed, step)
            for key, values in gathered.items():
                values.append(accelerator.gather(batch[key]).float())
        scores = torch.cat(gathered["scores"])
        return {"eval_reward_mean": scores.mean().item(),
                "eval_reward_std": scores.std().item() if scores.numel() > 1 else 0.0,
                "eval_kl": torch.cat(gathered["kl"]).mean().item(),
                "eval_response_length": torch.cat(gathered["lengths"]).mean().item()}

    def _scores(self, prompts: list[Prompt], texts: list[str],
                id_lists: list[list[int]]) -> torch.Tensor:
        if self.reward_function is not None:
            return torch.as_tensor(self.reward_function(prompts, texts, id_lists),
                                   dtype=torch.float32)
        raw = score_responses(self.reward_model, self.reward_tokenizer,
                              list(zip(prompts, texts, strict=True)),
                              max_length=self.reward_length, batch_size=len(texts))
        return raw - self.reward_bias

    def _ptx_batch(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.ptx_ids:
            return None
        rng = random.Random(_seed_for(self.config.seed, step,
                                      self.accelerator.process_index, 2 + index))
        rows = [self.ptx_ids[rng.randrange(len(self.ptx_ids))]
                for _ in range(self.config.ptx_batch_size)]
        ids, attention = pad_rows(rows, self.tokenizer.pad_token_id, left=False)
        return ids.to(self.accelerator.device), attention.to(self.accelerator.device)

    def _policy_pass(self, mb: Mapping[str, torch.Tensor], width: int,
                     ptx: tuple[torch.Tensor, torch.Tensor] | None):
        """Return the policy's response logits [B, R, V] and the ptx logits (or None).

        In one process, two passes (the response positions only through the LM head).
        Across processes, with a pretraining-mix batch, both go through the policy in one
        forward pass (the rows padded on the right to one width), as the distributed
        wrapper expects one forward per backward.
        """
        temperature = self.config.temperature
        if ptx is None or self.accelerator.num_processes == 1:
            logits = _response_logits(self.policy, mb["input_ids"], mb["attention"],
                                      mb["positions"], width, temperature)
            if ptx is None:
                return logits, None
            ids, attention = ptx
            return logits, self.policy(input_ids=ids, attention_mask=attention,
                                       use_cache=False).logits
        ids, attention = ptx
        rows, total = mb["input_ids"].shape[0], max(mb["input_ids"].shape[1], ids.shape[1])

        def widen(x: torch.Tensor, value: int) -> torch.Tensor:
            return F.pad(x, (0, total - x.shape[1]), value=value)

        pad = self.tokenizer.pad_token_id
        logits = self.policy(
            input_ids=torch.cat([widen(mb["input_ids"], pad), widen(ids, pad)]),
            attention_mask=torch.cat([widen(mb["attention"], 0), widen(attention, 0)]),
            position_ids=torch.cat([widen(mb["positions"], 0), widen(_positions(attention), 0)]),
            use_cache=False).logits
        end = mb["input_ids"].shape[1]
        return (logits[:rows, width - 1:end - 1].float() / temperature,
                logits[rows:, :ids.shape[1]])

    def update(self, step: int, batch: Mapping[str, Any]) -> dict[str, float]:
        """Run the PPO epochs over one rollout batch; return the mean statistics."""
        config, accelerator = self.config, self.accelerator
        self.policy.train()
        self.value.train()
        n = batch["input_ids"].shape[0]
        generator = torch.Generator().manual_seed(_seed_for(config.seed, step, 0, 99))
        sums: dict[str, float] = {}
        count = 0
        width = batch["width"]
        for epoch in range(config.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, config.mini_batch_prompts):
                rows = order[start:start + config.mini_batch_prompts].to(accelerator.device)
                mb = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}
                mask = mb["mask"]
                ptx = self._ptx_batch(step, epoch * n + start)
                with accelerator.autocast():
                    logits, ptx_logits = self._policy_pass(mb, width, ptx)
                    logprobs = _token_logprobs(logits, mb["responses"])
                    entropy = ppo_math.entropy_from_logits(logits.detach(), mask)
                    del logits
                    pg_loss, pg_stats = ppo_math.policy_loss(
                        logprobs, mb["logprobs"], mb["advantages"], mask,
                        clip=config.cliprange)
                    values = self.value(mb["input_ids"], mb["attention"],
                                        mb["positions"])[:, width - 1:-1]
                    vf_loss, vf_stats = ppo_math.value_loss(
                        values, mb["values"], mb["returns"], mask, clip=config.cliprange_value)
                    loss = pg_loss + config.vf_coef * vf_loss
                    ptx_value = torch.zeros(())
                    if ptx is not None:
                        ids, attention = ptx
                        ptx_value = ppo_math.ptx_loss(ptx_logits, ids, attention)
                        loss = loss + config.ptx_coef * ptx_value
                ppo_math.check_finite("the PPO loss", loss, step=step)
                accelerator.backward(loss)
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                    accelerator.clip_grad_norm_(self.value.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                figures = {
                    "policy_loss": pg_loss, "value_loss": vf_loss, "ptx_loss": ptx_value,
                    "entropy": entropy, "clipfrac": pg_stats["clip_fraction"],
                    "approx_kl": pg_stats["approx_kl"],
                    "value_clipfrac": vf_stats["clip_fraction"], "loss": loss,
                }
                for key, value in figures.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1
        return {key: value / count for key, value in sums.items()}

    def step(self, step: int) -> dict[str, float]:
        """Run one PPO step (rollout, then update); return its logged figures."""
        started = time.perf_counter()
        batch = self.rollout(step)
        rolled = time.perf_counter()
        figures = self.update(step, batch)
        gathered = {k: self.accelerator.gather_for_metrics(batch[k]).float()
                    for k in ("scores", "kl", "lengths", "ended")}
        scores = gathered["scores"]
        figures.update({
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std().item() if scores.numel() > 1 else 0.0,
            "kl": gathered["kl"].mean().item(),
            "response_length": gathered["lengths"].mean().item(),
            "ended_fraction": gathered["ended"].mean().item(),
            "episodes": step * self.config.rollout_prompts * self.accelerator.num_processes,
            "rollout_seconds": rolled - started,
            "update_seconds": time.perf_counter() - rolled,
            "tokens": float(gathered["lengths"].sum().item()),
        })
        return figures

    # -- The loop ---------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
        """Train to max_steps (from a checkpoint if given), save the policy, return metrics."""
        config = self.config
        start = 0
        if resume_from_checkpoint:
            start = self._load_checkpoint(Path(resume_from_checkpoint))
            logger.info("resuming PPO from %s (step %d)", resume_from_checkpoint, start)
        began = time.perf_counter()
        last: dict[str, float] = {}
        for step in range(start + 1, config.max_steps + 1):
            figures = self.step(step)
            if self.eval_prompts and (step == config.max_steps or (
                    config.eval_steps and step % config.eval_steps == 0)):
                figures.update(self.evaluate(step))
            self.state.global_step = step
            self.state.epoch = step * config.rollout_prompts / len(self.prompts)
            last = figures
            # As transformers' Trainer: step end (where training.run checks its lease and
            # a cancel), then the log, then the checkpoint.
            for callback in self.callbacks:
                callback.on_step_end(config, self.state, self.control)
            if step % config.logging_steps == 0 or step == config.max_steps:
                logs = {k: round(v, 6) if isinstance(v, float) else v
                        for k, v in figures.items()}
                self.log_history.append({"step": step, **logs})
                for callback in self.callbacks:
                    callback.on_log(config, self.state, self.control, logs=logs)
            if step % config.save_steps == 0 and step < config.max_steps:
                self._save_checkpoint(step)
                for callback in self.callbacks:
                    callback.on_save(config, self.state, self.control)
        runtime = time.perf_counter() - began
        metrics = {k: v for k, v in last.items() if k in (
            "reward_mean", "reward_std", "kl", "entropy", "response_length", "ptx_loss",
            "eval_reward_mean", "eval_reward_std", "eval_kl", "eval_response_length")}
        metrics.update(global_step=self.state.global_step, train_runtime=runtime,
                       reward_bias=self.reward_bias, model_dir=str(config.output_dir))
        self.save_policy(metrics)
        return metrics

    # -- Saving ------------------------------------------------------------------------------

    def _save_checkpoint(self, step: int) -> Path:
        """Write a resumable checkpoint atomically; return its folder."""
        accelerator = self.accelerator
        root = self.config.checkpoint_dir
        final = root / f"checkpoint-{step}"
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".tmp-checkpoint-{step}"
            shutil.rmtree(tmp, ignore_errors=True)
            accelerator.unwrap_model(self.policy).save_pretrained(tmp / "policy")
            self.tokenizer.save_pretrained(tmp / "policy")
            accelerator.unwrap_model(self.value).model.save_pretrained(tmp / "value")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            shutil.rmtree(final, ignore_errors=True)  # an incomplete one from a dead attempt
            os.replace(tmp, final)
            fsync_path(root)
            state = {"kind": "ppo", "step": step, "max_steps": self.config.max_steps,
                     "config": self.config.to_dict(), "log_history": self.log_history,
                     "best_metric": max((h["reward_mean"] for h in self.log_history),
                                        default=None)}
            mark_complete(final, state)  # flushed, then the marker, last
            self._rotate_checkpoints()
        accelerator.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if limit is None:
            return
        complete = sorted((p for p in self.config.checkpoint_dir.glob("checkpoint-*")
                           if is_complete(p)), key=lambda p: int(p.name.split("-")[1]))
        for old in complete[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, folder: Path) -> int:
        state = read_marker(folder)
        accelerator = self.accelerator
        policy = AutoModelForCausalLM.from_pretrained(folder / "policy")
        accelerator.unwrap_model(self.policy).load_state_dict(policy.state_dict())
        value = load_reward_model(str(folder / "value"), self.tokenizer)
        accelerator.unwrap_model(self.value).model.load_state_dict(value.state_dict())
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True,
                                                  map_location=accelerator.device))
        self.log_history = list(state.get("log_history", []))
        self.state.global_step = int(state["step"])
        return self.state.global_step

    def save_policy(self, metrics: Mapping[str, Any]) -> Path:
        """Save the policy and tokenizer to output_dir; the training record, renamed last."""
        out = Path(self.config.output_dir)
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return out
        record = {"kind": "ppo", "base_model": self.config.model_path,
                  "reward_model": self.config.reward_model_path,
                  "config": self.config.to_dict(), "step": self.state.global_step,
                  "metrics": dict(metrics),
                  "versions": {"torch": torch.__version__,
                               "transformers": transformers.__version__}}
        return save_final_model(out, accelerator.unwrap_model(self.policy), self.tokenizer,
                                record)


def train_ppo(
    config: PPOConfig,
    prompts: str | os.PathLike | Iterable[Mapping[str, Any]],
    valid: str | os.PathLike | Iterable[Mapping[str, Any]] | None = None,
    *,
    callbacks: list[TrainerCallback] | None = None,
    resume_from_checkpoint: str | None = None,
    reward_function: RewardFunction | None = None,
) -> dict[str, Any]:
    """Run PPO-ptx on a prompts snapshot (JSONL path or rows); save and return metrics.

    ``valid``: held-out prompts (the snapshot's valid split) whose responses are scored
    every ``config.eval_steps`` steps and at the end. ``resume_from_checkpoint``: a
    complete checkpoint folder. ``reward_function`` replaces the reward model (its bias
    then 0).
    """
    trainer = PPOTrainer(config, load_prompts(prompts), reward_function=reward_function,
                         callbacks=callbacks,
                         eval_prompts=load_prompts(valid) if valid is not None else None)
    return trainer.train(resume_from_checkpoint=resume_from_checkpoint)

