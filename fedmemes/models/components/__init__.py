"""Building blocks the classifiers plug in: text encoders and image backbones
(conf/model/{text_encoder,image_encoder})."""
