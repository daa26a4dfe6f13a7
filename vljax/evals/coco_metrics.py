def caption_metrics(c, r):
  return {"cider": 0.0, "bleu4": 0.0}
