"""The data pipeline: raw videos in, subject-to-video training data (the official SFT layout) out.

One module per stage; video.py reads sources, clips.py is stage 1's shot and clip filtering, synthetic.py makes
raw test videos.
"""
