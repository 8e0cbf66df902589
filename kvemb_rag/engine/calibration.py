"""Default calibration texts for layer selection: offline, deterministic, varied.

The paper's layer-selection rule (docs/method.md, "Choosing the layers") runs about 1,000 texts through the
model to estimate the intrinsic dimension per layer. We ship no corpus; instead
:func:`default_calibration_texts` composes texts from fixed word lists across twelve domains with a seeded
generator (``random.Random(seed)``), mixing statements, questions, instructions and short multi-sentence
passages of 1 to 4 sentences, so the same call always returns the same texts on every machine. Pass
``calibration_texts=[...]`` to :class:`~kvemb_rag.KVEmbedder` to use texts from your own domain instead.
"""

from __future__ import annotations

import random

from kvemb_rag.errors import ConfigError

__all__ = ["default_calibration_texts"]

_DOMAINS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "medicine": (
        ("the patient", "a new vaccine", "the clinical trial", "chronic inflammation", "the surgeon", "the antibiotic"),
        ("reduced", "increased", "was linked to", "did not affect", "prevented", "delayed"),
        ("the risk of infection", "blood pressure", "recovery after surgery", "the immune response",
         "symptoms in older adults", "hospital readmissions"),
    ),
    "finance": (
        ("the central bank", "the startup", "inflation", "the bond market", "our quarterly revenue", "the investor"),
        ("raised", "cut", "outperformed", "depended on", "was hurt by", "stabilised"),
        ("interest rates", "the exchange rate", "consumer spending", "its credit rating", "the housing market",
         "long-term savings"),
    ),
    "software": (
        ("the compiler", "this function", "the database index", "a memory leak", "the new release", "the API"),
        ("crashes on", "speeds up", "returns", "ignores", "was rewritten to handle", "logs"),
        ("empty input", "concurrent writes", "unicode file names", "large JSON payloads", "network timeouts",
         "the configuration file"),
    ),
    "cooking": (
        ("the recipe", "a pinch of salt", "slow roasting", "the dough", "fresh basil", "the sauce"),
        ("brings out", "ruins", "needs", "goes well with", "thickens with", "balances"),
        ("the sweetness of tomatoes", "a hot oven", "an hour of resting", "grilled fish", "a little butter",
         "lemon zest"),
    ),
    "travel": (
        ("the night train", "our flight", "the old harbour", "the mountain trail", "a local guide", "the museum"),
        ("leads to", "was delayed by", "offers", "is closed during", "connects", "overlooks"),
        ("the city centre", "heavy snow", "a view of the lake", "the winter months", "three small villages",
         "the border crossing"),
    ),
    "sports": (
        ("the goalkeeper", "the home team", "the marathon runner", "the coach", "a late penalty", "the referee"),
        ("secured", "lost", "trained for", "celebrated", "questioned", "changed"),
        ("the championship", "the final minutes", "a new world record", "the starting line-up", "the rules",
         "a difficult season"),
    ),
    "law": (
        ("the court", "the contract", "the tenant", "a new regulation", "the defendant", "the appeal"),
        ("requires", "overturned", "protects", "was signed despite", "limits", "clarified"),
        ("data privacy", "the original ruling", "unpaid rent", "the liability clause", "public access to records",
         "the employer's obligations"),
    ),
    "climate": (
        ("rising sea levels", "the drought", "solar panels", "the glacier", "carbon emissions", "the storm"),
        ("threaten", "lowered", "reshaped", "accelerated", "are measured by", "damaged"),
        ("coastal cities", "crop yields", "the electricity grid", "river flows", "the Arctic summer",
         "local fisheries"),
    ),
    "history": (
        ("the empire", "the treaty", "the printing press", "the revolution", "medieval merchants", "the archive"),
        ("collapsed after", "ended", "transformed", "traded", "survived", "documented"),
        ("centuries of conflict", "the spread of literacy", "silk and spices", "the royal court",
         "a long famine", "the first census"),
    ),
    "education": (
        ("the teacher", "online courses", "the exam", "a reading programme", "the university", "young students"),
        ("improved", "replaced", "tested", "motivated", "struggled with", "introduced"),
        ("basic arithmetic", "classroom attendance", "critical thinking", "foreign languages",
         "graduation rates", "homework habits"),
    ),
    "physics": (
        ("the laser", "dark matter", "the particle detector", "a superconductor", "the telescope", "friction"),
        ("emits", "explains", "detected", "conducts", "slows", "bends"),
        ("light from distant galaxies", "electricity without resistance", "the orbit of stars",
         "a single photon", "the moving cart", "gravitational waves"),
    ),
    "customer service": (
        ("my card", "the refund", "your order", "the support agent", "this account", "the delivery"),
        ("was declined for", "has not arrived after", "was charged twice for", "cannot be linked to",
         "was cancelled because of", "is pending for"),
        ("an online purchase", "two weeks", "a foreign transaction", "the mobile app", "an address change",
         "a subscription"),
    ),
}

_CONNECTORS = ("Moreover,", "However,", "As a result,", "In contrast,", "Meanwhile,", "For example,")
_QUESTION_STARTS = ("Why", "How", "When", "Whether")
_INSTRUCTIONS = ("Explain how", "Summarise why", "Describe whether", "List the ways")


def _sentence(rng: random.Random, domain: str) -> str:
    subjects, verbs, objects = _DOMAINS[domain]
    return f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"


def default_calibration_texts(n: int = 1000, seed: int = 0) -> list[str]:
    """Return ``n`` deterministic calibration texts (the same list for the same ``n`` and ``seed``).

    Args:
        n: Number of texts (the method uses 1,000).
        seed: Seed of the generator.

    Returns:
        Distinct, non-empty English texts of 1 to 4 sentences across twelve domains.

    Example:
        >>> texts = default_calibration_texts(3)
        >>> texts == default_calibration_texts(3)
        True
    """
    if n < 1:
        raise ConfigError(f"n={n} must be >= 1.")
    rng = random.Random(seed)
    domains = sorted(_DOMAINS)
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < n:
        domain = domains[len(texts) % len(domains)]
        kind = rng.random()
        if kind < 0.15:
            text = f"{rng.choice(_QUESTION_STARTS)} {_sentence(rng, domain)}?"
        elif kind < 0.25:
            text = f"{rng.choice(_INSTRUCTIONS)} {_sentence(rng, domain)}."
        else:
            parts = [_sentence(rng, domain).capitalize() + "."]
            for _ in range(rng.randint(0, 3)):
                other = domain if rng.random() < 0.7 else rng.choice(domains)
                parts.append(f"{rng.choice(_CONNECTORS)} {_sentence(rng, other)}.")
            text = " ".join(parts)
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts
