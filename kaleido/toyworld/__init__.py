"""A synthetic multi-subject video world for training and evaluating a tiny Kaleido (docs/toyworld.md).

catalogue  subject identities (shape × colour × pattern) and the fixed train / held-out split
render     antialiased drawing of one subject; reference images
world      clip sampler: backgrounds, trajectories, occlusion, captions, per-frame ground truth
writer     the official SFT dataset layout (videos/, labels/, references/) plus meta/<id>.json
detector   finds the catalogue's subjects in decoded frames
evaluate   subject-to-video metrics of generated videos (with the detector)
probe      the reference gain: how much the denoising loss of held-out samples depends on their references
"""
