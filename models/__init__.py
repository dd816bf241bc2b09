"""ALPNet: ``grid_proto_fewshot.FewShotSeg`` (original interface), the ALP classifier
(``alpmodule``) and the encoders with their pretrained weights (``backbone``)."""
