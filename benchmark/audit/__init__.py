"""One-run privacy audits (Steinke, Nasr, Jagielski, NeurIPS 2023): canaries included in training with
probability 1/2 each (`canaries`), scored from the trained model's released outputs (`scores`), and an
epsilon lower bound from the number of correct in/out guesses (`bound`). Importable without Ray or MLflow;
the submodules are imported where used, so reading the kinds (the report) does not load torch."""
