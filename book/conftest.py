collect_ignore = ["08_full_training.ipynb"]
