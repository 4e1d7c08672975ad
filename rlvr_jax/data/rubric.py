"""A rubric task: prompts with several code-checkable constraints (issue 16).

In the spirit of IFEval, each prompt asks for a short text and adds Cr
constraints (length in words, required or forbidden keywords, a final line,
a number of bullet points, letter case, the first word). Each constraint is a
criterion with a weight and a category, scored by a small checker here; the
verdict matrix [B, Cr] with the weights and categories is what POW3R weighs
(`algorithms.pow3r`, METHODS.md 6.3).

**(decision)** The checkers are written here rather than taken from
lm-eval's IFEval registry: `lm_eval.tasks.ifeval` imports nltk (and downloads
its `punkt_tab` data at import time, impossible offline) and langdetect, and
lm-eval itself pulls in a large dependency tree; none of it is needed for the
constraints below.

Sources:
- `generate(num, seed=..., difficulty=...)`: procedural prompts, the same for
  the same seed; difficulty d in 1..5 gives d + 1 constraints, and tighter
  word limits.
- `read_jsonl(path)`: one JSON object a line, {"prompt": str, "criteria":
  [{"kind": str, "params": {...}, "weight": float, "category": str}, ...]}
  (weight defaults to 1, category to the kind's default; an optional "id").
Each `RubricPrompt.record()` is a dataset record (`data/files.py` layout) with
the criteria in `metadata['criteria']` and an empty answer (no gold answer).

Checkers and their params (`CHECKERS`, all verdicts 0 or 1):
- word_count {min_words, max_words}: min_words <= number of words <=
  max_words (words: runs of letters, digits and apostrophes).
- include_keyword {word}: the word occurs, case-insensitive, as a whole word.
- exclude_keyword {word}: it does not.
- final_line {line}: the last non-empty line, stripped, equals `line`
  case-insensitively (so it can combine with a case constraint).
- bullet_count {n}: exactly n lines start with "- " or "* " (after
  indentation).
- case {case}: 'lower' (no upper-case letter) or 'upper' (no lower-case
  letter), and at least one letter.
- first_word {word}: the first word equals `word`, case-insensitive.
"""

import dataclasses
import json
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

CATEGORIES = ("length", "content", "format", "style")

_WORD = re.compile(r"[A-Za-z0-9']+")
_BULLET = re.compile(r"^\s*[-*] ")


def _words(text: str) -> list[str]:
  return _WORD.findall(text)


def check_word_count(text: str, *, min_words: int, max_words: int) -> bool:
  """min_words <= number of words <= max_words."""
  return min_words <= len(_words(text)) <= max_words


def check_include_keyword(text: str, *, word: str) -> bool:
  """`word` occurs as a whole word, case-insensitive."""
  return re.search(rf"(?<![A-Za-z0-9']){re.escape(word)}(?![A-Za-z0-9'])",
                   text, re.IGNORECASE) is not None


def check_exclude_keyword(text: str, *, word: str) -> bool:
  """`word` does not occur as a whole word, case-insensitive."""
  return not check_include_keyword(text, word=word)


def check_final_line(text: str, *, line: str) -> bool:
  """The last non-empty line, stripped, is `line` (case-insensitive)."""
  lines = [x.strip() for x in text.splitlines() if x.strip()]
  return bool(lines) and lines[-1].lower() == line.strip().lower()


def check_bullet_count(text: str, *, n: int) -> bool:
  """Exactly n lines are bullet points ("- " or "* ")."""
  return sum(bool(_BULLET.match(x)) for x in text.splitlines()) == n


def check_case(text: str, *, case: str) -> bool:
  """'lower': letters but no upper case; 'upper': letters but no lower case."""
  if not any(c.isalpha() for c in text):
    return False
  return text == (text.lower() if case == "lower" else text.upper())


def check_first_word(text: str, *, word: str) -> bool:
  """The first word equals `word`, case-insensitive."""
  words = _words(text)
  return bool(words) and words[0].lower() == word.lower()


@dataclasses.dataclass(frozen=True)
class Checker:
  """A kind of criterion.

  Attributes:
    fn: fn(text, **params) -> bool.
    params: required parameter names and their types.
    category: default category (one of `CATEGORIES`).
    instruction: str.format template of the sentence added to the prompt.
  """
  fn: Callable[..., bool]
  params: Mapping[str, type]
  category: str
  instruction: str


CHECKERS: dict[str, Checker] = {
    "word_count": Checker(check_word_count,
                          {"min_words": int, "max_words": int}, "length",
                          "Use between {min_words} and {max_words} words."),
    "include_keyword": Checker(check_include_keyword, {"word": str},
                               "content", "Use the word \"{word}\"."),
    "exclude_keyword": Checker(check_exclude_keyword, {"word": str},
                               "content", "Do not use the word \"{word}\"."),
    "final_line": Checker(check_final_line, {"line": str}, "format",
                          "End with the line \"{line}\"."),
    "bullet_count": Checker(check_bullet_count, {"n": int}, "format",
                            "Include exactly {n} bullet points, each on its "
                            "own line starting with \"- \"."),
    "case": Checker(check_case, {"case": str}, "style",
                    "Write everything in {case} case letters."),
    "first_word": Checker(check_first_word, {"word": str}, "style",
                          "Start with the word \"{word}\"."),
}


@dataclasses.dataclass(frozen=True)
class Criterion:
  """One checkable constraint of a prompt."""
  kind: str
  params: Mapping[str, Any]
  weight: float = 1.0
  category: str = ""

  def __post_init__(self):
    if self.kind not in CHECKERS:
      raise ValueError(f"criterion kind {self.kind!r} is unknown; valid: "
                       f"{sorted(CHECKERS)}.")
    checker = CHECKERS[self.kind]
    if set(self.params) != set(checker.params):
      raise ValueError(f"criterion {self.kind!r} takes params "
                       f"{sorted(checker.params)}, got {sorted(self.params)}.")
    for key, kind in checker.params.items():
      if not isinstance(self.params[key], kind) or isinstance(
          self.params[key], bool):
        raise ValueError(f"criterion {self.kind!r}: param {key!r} must be "
                         f"{kind.__name__}, got {self.params[key]!r}.")
    if self.kind == "case" and self.params["case"] not in ("lower", "upper"):
      raise ValueError("criterion 'case': param 'case' must be 'lower' or "
                       f"'upper', got {self.params['case']!r}.")
    if not self.weight >= 0.0:
      raise ValueError(f"criterion {self.kind!r}: weight must be >= 0, got "
                       f"{self.weight}.")
    if not self.category:
      object.__setattr__(self, "category", checker.category)
    if self.category not in CATEGORIES:
      raise ValueError(f"criterion {self.kind!r}: category must be one of "
                       f"{CATEGORIES}, got {self.category!r}.")

  def instruction(self) -> str:
    return CHECKERS[self.kind].instruction.format(**self.params)

  def check(self, text: str) -> float:
    """Verdict in {0, 1}."""
    return float(CHECKERS[self.kind].fn(text, **self.params))

  def to_json(self) -> dict[str, Any]:
    return {"kind": self.kind, "params": dict(self.params),
            "weight": self.weight, "category": self.category}


@dataclasses.dataclass(frozen=True)
class RubricPrompt:
  """A prompt and its criteria."""
  id: str
  prompt: str
  criteria: tuple[Criterion, ...]

  def record(self) -> dict[str, Any]:
    """The dataset record: problem, empty answer, criteria in metadata."""
    return {"id": self.id, "problem": self.prompt, "answer": "",
            "task": "rubric",
            "metadata": {"criteria": [c.to_json() for c in self.criteria]}}


def criteria_of(record: Mapping[str, Any]) -> tuple[Criterion, ...]:
  """The criteria of a `RubricPrompt.record()`."""
  return tuple(Criterion(**c) for c in record["metadata"]["criteria"])


_TOPICS = ("the ocean", "a city park", "morning coffee", "a train journey",
           "autumn leaves", "a library", "mountain hiking", "a rainy day",
           "learning to cook", "the night sky", "a small garden", "old maps")
_KEYWORDS = ("bright", "quiet", "river", "window", "bridge", "stone", "green",
             "music", "light", "paper", "winter", "story", "simple", "market")
_FINAL_LINES = ("The end.", "That is all.", "Thank you.", "Done.")
_FIRST_WORDS = ("Today", "Imagine", "Once", "Here", "Consider")


def _random_criterion(kind: str, rng: np.random.Generator,
                      difficulty: int) -> Criterion:
  if kind == "word_count":
    low = int(rng.integers(20, 60))
    return Criterion(kind, {"min_words": low,
                            "max_words": low + 60 // difficulty})
  if kind in ("include_keyword", "exclude_keyword"):
    return Criterion(kind, {"word": str(rng.choice(_KEYWORDS))},
                     weight=float(rng.choice([1.0, 2.0])))
  if kind == "final_line":
    return Criterion(kind, {"line": str(rng.choice(_FINAL_LINES))})
  if kind == "bullet_count":
    return Criterion(kind, {"n": int(rng.integers(2, 6))})
  if kind == "case":
    return Criterion(kind, {"case": str(rng.choice(["lower", "upper"]))},
                     weight=0.5)
  return Criterion(kind, {"word": str(rng.choice(_FIRST_WORDS))})


def generate(num: int, *, seed: int, difficulty: int = 2
             ) -> list[RubricPrompt]:
  """`num` procedural rubric prompts, reproducible from `seed`.

  Args:
    num: number of prompts.
    seed: RNG seed.
    difficulty: 1..5; a prompt has difficulty + 1 criteria of distinct kinds
      (two keyword criteria never name the same word), and the word-count
      window is 60 // difficulty words wide.

  Returns:
    The prompts, ids 'rubric-<seed>-<i>'.
  """
  if not 1 <= difficulty <= 5:
    raise ValueError(f"difficulty must be in 1..5, got {difficulty}.")
  if num < 0:
    raise ValueError(f"num must be >= 0, got {num}.")
  rng = np.random.default_rng(seed)
  kinds = sorted(CHECKERS)
  prompts = []
  for i in range(num):
    while True:
      chosen = rng.choice(kinds, size=difficulty + 1, replace=False)
      criteria = tuple(_random_criterion(str(k), rng, difficulty)
                       for k in chosen)
      keywords = [c.params["word"] for c in criteria
                  if c.kind.endswith("_keyword")]
      if len(set(keywords)) == len(keywords):
        break
    topic = str(rng.choice(_TOPICS))
    text = " ".join([f"Write a short text about {topic}."] +
                    [c.instruction() for c in criteria])
    prompts.append(RubricPrompt(f"rubric-{seed}-{i}", text, criteria))
  return prompts


def read_jsonl(path: str) -> list[RubricPrompt]:
  """Rubric prompts from a JSONL file (format in the module docstring).

  Raises:
    ValueError: naming the file and line of a malformed row.
  """
  prompts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"),
                                                       str):
          raise ValueError("a row must be an object with a string 'prompt'")
        items = row.get("criteria")
        if not isinstance(items, list) or not items:
          raise ValueError("'criteria' must be a non-empty list")
        criteria = []
        for item in items:
          if not isinstance(item, dict) or not isinstance(item.get("params"),
                                                          dict):
            raise ValueError("each criterion must be an object with 'kind' "
                             "and a 'params' object")
          criteria.append(Criterion(
              kind=item.get("kind"), params=item["params"],
              weight=float(item.get("weight", 1.0)),
              category=item.get("category", "")))
        prompts.append(RubricPrompt(str(row.get("id", f"{path}:{number}")),
                                    row["prompt"], tuple(criteria)))
      except (ValueError, TypeError) as e:
        raise ValueError(f"{path}:{number}: {e}") from e
  return prompts


def write_jsonl(prompts: Sequence[RubricPrompt], path: str) -> None:
  """Writes prompts in the format `read_jsonl` reads."""
  with open(path, "w", encoding="utf-8") as f:
    for p in prompts:
      f.write(json.dumps({"id": p.id, "prompt": p.prompt,
                          "criteria": [c.to_json() for c in p.criteria]})
              + "\n")


@dataclasses.dataclass(frozen=True)
class CriteriaArrays:
  """Criteria of Q prompts padded to Cr slots (the inputs of POW3R).

  Attributes:
    weights: [Q, Cr] float32 task weights w (0 on padding).
    categories: [Q, Cr] int32 indices into `CATEGORIES` (0 on padding).
    mask: [Q, Cr] bool, True on real criteria.
  """
  weights: np.ndarray
  categories: np.ndarray
  mask: np.ndarray


def criteria_arrays(criteria: Sequence[Sequence[Criterion]], *,
                    max_criteria: int) -> CriteriaArrays:
  """Weights, categories and mask of Q prompts' criteria, [Q, Cr].

  Args:
    criteria: Q tuples of criteria (one per prompt, or one per row).
    max_criteria: Cr, the padded width; >= every prompt's count.

  Returns:
    CriteriaArrays.
  """
  Q = len(criteria)
  weights = np.zeros((Q, max_criteria), np.float32)
  categories = np.zeros((Q, max_criteria), np.int32)
  mask = np.zeros((Q, max_criteria), bool)
  for n, row in enumerate(criteria):
    if len(row) > max_criteria:
      raise ValueError(f"prompt {n} has {len(row)} criteria > max_criteria="
                       f"{max_criteria}.")
    for j, c in enumerate(row):
      weights[n, j] = c.weight
      categories[n, j] = CATEGORIES.index(c.category)
      mask[n, j] = True
  return CriteriaArrays(weights, categories, mask)


def verdict_matrix(criteria: Sequence[Sequence[Criterion]],
                   texts: Sequence[str], *, max_criteria: int) -> np.ndarray:
  """Verdicts v[i, j] of response i on criterion j of its own prompt.

  Args:
    criteria: B tuples of criteria, row i's prompt's (repeat a prompt's
      criteria for each of its G rollouts).
    texts: B responses (a non-str counts as "").
    max_criteria: Cr; padding slots get 0.

  Returns:
    [B, Cr] float32 in {0, 1}.
  """
  if len(criteria) != len(texts):
    raise ValueError(f"criteria has {len(criteria)} rows but texts has "
                     f"{len(texts)}.")
  out = np.zeros((len(texts), max_criteria), np.float32)
  for i, (row, text) in enumerate(zip(criteria, texts)):
    if len(row) > max_criteria:
      raise ValueError(f"row {i} has {len(row)} criteria > max_criteria="
                       f"{max_criteria}.")
    text = text if isinstance(text, str) else ""
    for j, c in enumerate(row):
      out[i, j] = c.check(text)
  return out
