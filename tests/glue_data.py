"""Writes a small fake GLUE root in the original file formats (BOM, header-less CoLA,
unescaped quotes), with labels that follow from the text so tiny models can learn them."""

import os

import numpy as np

WORDS = ("good great fine nice happy bad awful poor sad ugly the a cat dog runs "
         "sits on mat house tree").split()
POSITIVE = {"good", "great", "fine", "nice", "happy"}


def sentence(rng, n=None):
    n = n or int(rng.integers(3, 12))
    return " ".join(rng.choice(WORDS, n))


def _label(s):
    return int(any(w in POSITIVE for w in s.split()))


def write(path, lines, bom=False, final_newline=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = "\n".join(lines) + ("\n" if final_newline else "")
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8") as f:
        f.write(text)


def make_glue(root, n_train=64, n_dev=21, n_test=13, seed=0):
    """SST-2, CoLA, MRPC, STS-B and RTE directories under `root`."""
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, n in sizes.items():
        test = split == "test"
        s1 = [sentence(rng) for _ in range(n)]
        s2 = [sentence(rng) for _ in range(n)]
        s1[0] = 'he said " hello " and left'  # a lone quote must stay text (QUOTE_NONE)
        # SST-2
        head = "index\tsentence" if test else "sentence\tlabel"
        write(f"{root}/SST-2/{split}.tsv", [head] + [
            f"{i}\t{s}" if test else f"{s}\t{_label(s)}" for i, s in enumerate(s1)])
        # CoLA: train/dev have no header
        if test:
            write(f"{root}/CoLA/test.tsv", ["index\tsentence"] +
                  [f"{i}\t{s}" for i, s in enumerate(s1)])
        else:
            write(f"{root}/CoLA/{split}.tsv", [f"src{i}\t{_label(s)}\t\t{s}"
                                              for i, s in enumerate(s1)], final_newline=False)
        # MRPC: BOM before the header
        head = ("index\t#1 ID\t#2 ID\t#1 String\t#2 String" if test else
                "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String")
        write(f"{root}/MRPC/{split}.tsv", [head] + [
            f"{i if test else _label(a + ' ' + b)}\t{100 + i}\t{200 + i}\t{a}\t{b}"
            for i, (a, b) in enumerate(zip(s1, s2, strict=True))], bom=True)
        # STS-B
        cols = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
        write(f"{root}/STS-B/{split}.tsv", [cols + ("" if test else "\tscore")] + [
            f"{i}\tg\tf\ty\t{i}\tn\tn\t{a}\t{b}" + ("" if test else
                                                   f"\t{len(set(a.split()) & set(b.split())):.3f}")
            for i, (a, b) in enumerate(zip(s1, s2, strict=True))])
        # RTE
        labels = ("entailment", "not_entailment")
        write(f"{root}/RTE/{split}.tsv", ["index\tsentence1\tsentence2" + ("" if test else
                                                                          "\tlabel")] + [
            f"{i}\t{a}\t{b}" + ("" if test else f"\t{labels[_label(b)]}")
            for i, (a, b) in enumerate(zip(s1, s2, strict=True))])
    # MNLI: matched and mismatched dev/test files, three labels
    nli = ("contradiction", "entailment", "neutral")
    cols = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2"
    for split in ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"):
        test = split.startswith("test")
        n = sizes["test" if test else "train" if split == "train" else "dev"]
        write(f"{root}/MNLI/{split}.tsv", [cols + ("" if test else "\tlabel1\tgold_label")] + [
            f"{i}\tp{i}\tq{i}\tfiction\t{sentence(rng)}\t{sentence(rng)}" +
            ("" if test else f"\t{nli[i % 3]}\t{nli[i % 3]}") for i in range(n)])
    return root
