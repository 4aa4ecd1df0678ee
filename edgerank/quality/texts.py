"""Text that quantization is calibrated on and fidelity is probed with."""

from __future__ import annotations

import random


def calibration_pairs() -> list[tuple[str, str]]:
    """Generic English pairs; only per-channel activation ranges are taken from them."""
    queries = [
        "how do vaccines train the immune system",
        "best way to store fresh bread",
        "what causes inflation to rise",
        "symptoms of a broken wrist",
        "why is the sky blue during the day",
        "history of the printing press in europe",
        "how to reset a home wifi router",
        "difference between a virus and a bacterium",
    ]
    passages = [
        "Vaccines expose the body to a harmless piece of a pathogen so that the immune "
        "system learns to recognise it and responds faster when the real infection arrives.",
        "Bread keeps best at room temperature in a paper bag for two days; for longer, slice "
        "it and freeze it, then toast the slices straight from the freezer.",
        "Prices rise when demand outpaces supply, when production costs climb, or when the "
        "money supply grows faster than the economy. Central banks respond with rate changes.",
        "The football season ended with a dramatic penalty shoot-out in the final.",
        "Sunlight is scattered by the molecules of the air, and shorter blue wavelengths "
        "scatter much more strongly than red ones, so the sky looks blue.",
        "Gutenberg's movable type press, around 1440, made books cheaper and spread literacy "
        "across Europe within a few decades, changing religion, science and politics.",
        "Unplug the router, wait thirty seconds, plug it back in. If that fails, hold the "
        "reset button for ten seconds to restore factory settings and set it up again.",
        "Viruses need a host cell to copy themselves, while bacteria are living cells that "
        "reproduce on their own; antibiotics work against bacteria but not against viruses.",
        "Swelling, pain when moving the hand and a visible deformity are common signs; an "
        "x-ray confirms the fracture. " * 3,
        "A short note.",
    ]
    return [(q, p) for i, q in enumerate(queries) for p in passages[i % 3 :: 3][:3]] + [
        (q, passages[i]) for i, q in enumerate(queries)
    ]


TOPICS = [
    "sleep cat night dream rest nap bed tired",
    "market stock price bank money trade fund rate",
    "river ocean ship harbour island water coast boat",
    "doctor hospital medicine health nurse fever care dose",
    "music piano guitar song concert band album tune",
    "school teacher student book exam class lesson grade",
    "rain storm cloud snow wind weather winter summer",
    "engine car road wheel fuel train travel speed",
]


FILLER = "the of and to in is was for on that with as by at from it an be this which".split()


def probe_groups(n_groups: int = 24, per_group: int = 10, seed: int = 7):
    """Synthetic (query, passages) groups with graded topical overlap and mixed lengths."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n_groups):
        topic = rng.choice(TOPICS).split()
        query = " ".join(rng.sample(topic, 3))
        passages = []
        for _ in range(per_group):
            words = rng.choice(TOPICS).split() if rng.random() < 0.5 else topic
            n = rng.randint(6, 120)
            passages.append(" ".join(rng.choice(words + FILLER) for _ in range(n)))
        groups.append((query, passages))
    return groups
