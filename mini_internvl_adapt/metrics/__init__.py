"""Domain-independent metrics: text (BLEU, ROUGE-L, CIDEr), answers, boxes."""
