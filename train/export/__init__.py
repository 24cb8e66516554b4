"""What a training job leaves behind in model/: the fp32 artifact and its manifest
(``artifact``), written by ``exporter`` from rank 0, then the post-training passes that add to it
(``post_training``: the int8 program of ``quantize``, the serving precisions of ``precision``,
the drift baseline of ``baseline``)."""
