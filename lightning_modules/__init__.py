"""Lightning modules: the shared compression loop and the DPHuBERT distillation stages."""
