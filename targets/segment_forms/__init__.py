"""Forms of a compiled segment that several backends' emitters export, kept in one place so a
backend folder never imports another's: ``nhwc`` (the plan's NHWC operands and bounded tile
batch, for emitters that go through ``torch.export``) and ``xnnpack_policies`` (D-STEP's
policies in ops XNNPACK runs whole, for the backends whose CPU path is XNNPACK). Plain torch,
imported only by emitters."""
