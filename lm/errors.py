"""The errors a user can cause and fix: one base class, caught once, at the command boundary.

Every command (lm/cli) catches `UserError` and prints its one-line message (exit status 1);
anything else is a bug and keeps its traceback. Library code raises the subclass that names
where the problem is (config, data, checkpoint, workdir, ...); the message names the field
or file and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
  """A problem with the input (flags, config, data, workdir, checkpoint) that the user fixes."""


class ConfigError(UserError):
  """A config problem; `problems` lists every one found, each naming its dotted key."""

  def __init__(self, problems: str | Sequence[str]):
    self.problems = [problems] if isinstance(problems, str) else list(problems)
    if len(self.problems) == 1:
      msg = f'invalid config: {self.problems[0]}'
    else:
      lines = '\n'.join(f'  {i}. {p}' for i, p in enumerate(self.problems, 1))
      msg = f'invalid config ({len(self.problems)} problems):\n{lines}'
    super().__init__(msg)


class DataError(UserError):
  """A data config, file or corpus problem; the message names it and the fix."""


class CheckpointError(UserError):
  """A checkpoint directory the run cannot use as it is; the message says what to do."""


class WorkdirError(UserError):
  """A workdir that does not hold what a command needs (config, tokenizer, checkpoints)."""


class ConversionError(UserError):
  """A Hugging Face config or checkpoint lm cannot map (lm.compat.hf); names file and fix."""


class DistributedError(UserError):
  """Flags or environment that do not describe a multi-process run."""


class TrainingDiverged(UserError):
  """The loss became NaN/inf; the last good checkpoint is left as it was."""


class InputError(UserError):
  """A bad input to inference or evaluation (a prompt, a sampling setting, an eval file or
  field, a task that does not fit the run); the message names it and the fix."""
