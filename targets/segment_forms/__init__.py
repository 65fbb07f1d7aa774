"""Forms of a compiled segment that several backends' emitters export, kept in one place so a
backend folder never imports another's: ``nhwc`` (the plan's NHWC operands and bounded tile
batch, for emitters that go through ``torch.export``). Plain torch, imported only by
emitters."""
