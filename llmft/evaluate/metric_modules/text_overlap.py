"""An `evaluate` metric module: ROUGE-1/2/L/Lsum, BLEU, chrF, exact match and word error rate in one pass.

Loaded with `evaluate.load(<path of this file>)`, so it works offline and never changes under a
run (hub metric scripts can). Scores are fractions: ROUGE F-measures averaged over rows (ROUGE-Lsum
splits summaries into sentences at newlines), BLEU and chrF are sacrebleu's corpus scores / 100,
exact match compares whitespace-normalised strings, word error rate
is corpus-level (word edits / reference words; it can exceed 1). Per-row ROUGE-L comes back too,
for the predictions table.
"""

import datasets
import evaluate
import jiwer
import sacrebleu
from rouge_score import rouge_scorer

_ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _normalise(text: str) -> str:
    return " ".join(text.split())


class TextOverlap(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="ROUGE-1/2/L/Lsum, BLEU, chrF, exact match and WER of generated text against references",
            citation="",
            inputs_description="predictions: list of str; references: list of str (one reference per row)",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict:
        scorer = rouge_scorer.RougeScorer(list(_ROUGE), use_stemmer=False)
        rows = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
        n = max(len(rows), 1)
        out = {name: sum(r[name].fmeasure for r in rows) / n for name in _ROUGE}
        out["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score / 100.0
        out["chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score / 100.0
        pairs = list(zip(predictions, references, strict=True))
        out["exact_match"] = sum(_normalise(p) == _normalise(r) for p, r in pairs) / n
        # jiwer refuses empty references; a reference with no words is scored on the others
        scored = [(p, r) for p, r in pairs if r.split()]
        words = jiwer.process_words([r for _, r in scored], [p for p, _ in scored]) if scored else None
        edits = (words.substitutions + words.deletions + words.insertions) if words else 0
        total = sum(len(r.split()) for _, r in scored)
        out["wer"] = edits / total if total else 0.0
        out["rougeL_per_row"] = [r["rougeL"].fmeasure for r in rows]
        return out
