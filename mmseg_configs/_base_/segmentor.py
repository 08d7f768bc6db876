# Shared by every segleak segmentor.
# - BN instead of mmseg's SyncBN: one process per model; the builder rewrites it to GN for DP-SGD.
# - Images reach the model as RGB (the data adapters decode to RGB), so no BGR->RGB swap.
# - The ImageNet mean/std stay the normaliser even without pretrained weights, so inputs are ~N(0, 1).
# - `size=None`: no padding to a fixed crop; the Lightning module feeds whole (resized) images.
# - `pretrained=None` and no `init_cfg`: nothing may be downloaded.
norm_cfg = dict(type='BN', requires_grad=True)
num_classes = 19
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=False,
    size=None,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
