"""Classic vision networks written in-tree to their published designs (no torchvision), healthy and with faults.

- ``resnet``: the CIFAR ResNet of He et al. 2015 (section 4.2: 6n+2 layers, widths 16/32/64, BasicBlocks of
  conv-BN-ReLU, global average pooling), n=1 (ResNet-8), with 1x1-conv projection shortcuts where the shape changes
  (the paper's option B, as torchvision's BasicBlock), trained as the paper does: SGD momentum 0.9, lr 0.1, weight
  decay 5e-4 (the common CIFAR recipe; the paper used 1e-4), a cosine schedule.
- ``mobilenet``: MobileNetV3-Small (Howard et al. 2019, table 2) at width 0.5, its first five bneck rows:
  inverted residuals with depthwise convolutions, ReLU then hardswish, squeeze-excite with a hardsigmoid gate;
  RMSprop as torchvision's recipe (alpha 0.9, eps 0.0316, momentum 0.9, weight decay 1e-5; lr 0.064 for batch 1024
  scaled linearly to batch 32: 0.002).
- ``unet``: the U-Net of Ronneberger et al. 2015 (encoder of double 3x3 convs and max pools, decoder of 2x2
  transposed convs with skip concatenation, 1x1 output conv), padded convs with BatchNorm as in the common PyTorch
  implementation (milesial/Pytorch-UNet), three levels of widths 8-16-32 plus a bottleneck of 64; per-pixel
  CrossEntropy over 3 classes on 16px synthetic shapes; Adam 1e-3.
- ``mnist-cnn``: the official PyTorch MNIST example's Net (conv-conv-maxpool-dropout-fc-dropout-fc10, log_softmax +
  nll_loss) at half its widths (conv16-conv32-fc64; the full widths cost ~20 s of checklist on one CPU thread), on
  synthetic seven-segment digits normalised with the example's constants (0.1307, 0.3081), with the example's
  Adadelta(lr=1.0) and StepLR(step_size=1, gamma=0.7) per epoch, declared here per optimizer step as
  gamma 0.7 ** (1 / batches per epoch). (Raw 0..255 pixels were tried on it: at half width they do not hurt its plain
  loop, 0.0106 against 0.0114, so that fault lives on ``mobilenet``.)
- ``lenet5``: LeNet-5 (LeCun et al. 1998) with its tanh units and average pooling, on the same digits; SGD momentum
  0.9, lr 0.01.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import babysitter

from . import Case, Fault
from .data import batches, generator, stripes

FAMILY = "vision"


# -- data -------------------------------------------------------------------------------------------
def normalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation with the data set's own statistics (transforms.Normalize(mean, std))."""
    mean = x.mean((0, 2, 3), keepdim=True)
    std = x.std((0, 2, 3), keepdim=True)
    return (x - mean) / std


#: the seven segments (top, top-right, bottom-right, bottom, bottom-left, top-left, middle) lit for each digit
SEGMENTS = ("1111110", "0110000", "1101101", "1111001", "0110011", "1011011", "1011111", "1110000", "1111111",
            "1111011")


def digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 grey images in [0, 1] (what ``transforms.ToTensor()`` gives): seven-segment digits, randomly shifted,
    of random stroke width and ink, with a little noise; labels 0-9."""
    g = generator(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        top = 4 + int(torch.randint(-3, 4, (1,), generator=g))
        left = 8 + int(torch.randint(-3, 4, (1,), generator=g))
        w = 2 + int(torch.randint(0, 2, (1,), generator=g))  # stroke width
        hgt, wid = 20, 12
        mid = top + hgt // 2 - w // 2
        boxes = (  # (row0, row1, col0, col1) of each segment
            (top, top + w, left, left + wid),
            (top, mid + w, left + wid - w, left + wid),
            (mid, top + hgt, left + wid - w, left + wid),
            (top + hgt - w, top + hgt, left, left + wid),
            (mid, top + hgt, left, left + w),
            (top, mid + w, left, left + w),
            (mid, mid + w, left, left + wid),
        )
        ink = 0.7 + 0.3 * float(torch.rand(1, generator=g))
        for lit, (r0, r1, c0, c1) in zip(SEGMENTS[int(y[i])], boxes):
            if lit == "1":
                x[i, 0, r0:r1, c0:c1] = ink
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), y


def shapes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with a few squares and discs of random size, position and brightness on a noisy background;
    the per-pixel label is 0 background, 1 square, 2 disc."""
    g = generator(seed)
    coords = torch.arange(size).float()
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    x = torch.zeros(n, 1, size, size)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            kind = int(torch.randint(1, 3, (1,), generator=g))
            r = 2 + 2.5 * float(torch.rand(1, generator=g))
            cy, cx = (r + (size - 2 * r) * torch.rand(2, generator=g)).tolist()
            if kind == 1:
                inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
            else:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            x[i, 0][inside] = 0.5 + 0.5 * float(torch.rand(1, generator=g))
            mask[i][inside] = kind
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    return (x - x.mean()) / x.std(), mask


# -- ResNet (He et al. 2015, CIFAR variant) ---------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 1, classes: int = 4, softmax_head: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for s in [stride] + [1] * (blocks_per_stage - 1):
                layers.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)
        self.softmax_head = softmax_head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        out = self.fc(out)
        if self.softmax_head:  # fault: probabilities out of the model, then CrossEntropyLoss applies log_softmax
            out = F.softmax(out, dim=1)
        return out


RESNET_STEPS = 150


def resnet(seed: int, *, softmax_head: bool = False, bn_beta: float = 0.0, freeze_stem: bool = False) -> dict:
    torch.manual_seed(seed)
    x, y = stripes(256, 16, 4, seed)
    model = ResNet(softmax_head=softmax_head)
    if bn_beta:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.bias, bn_beta)
    if freeze_stem:
        model.conv1.weight.requires_grad_(False)
    return dict(
        model=model, data=batches(normalize(x), y, size=32), loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        step=babysitter.Step(scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, RESNET_STEPS)),
    )


# -- MobileNetV3-Small (Howard et al. 2019) ---------------------------------------------------------
def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int, sum_pool: bool = False):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.sum_pool = sum_pool

    def forward(self, x):
        # fault sum_pool: the squeeze sums over the pixels instead of averaging them
        s = x.sum((2, 3), keepdim=True) if self.sum_pool else F.adaptive_avg_pool2d(x, 1)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * F.hardsigmoid(s)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, exp: int, cout: int, se: bool, act: str, stride: int,
                 se_sum_pool: bool = False):
        super().__init__()
        Act = nn.Hardswish if act == "HS" else nn.ReLU
        layers = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), Act()]
        layers += [nn.Conv2d(exp, exp, kernel, stride, kernel // 2, groups=exp, bias=False), nn.BatchNorm2d(exp),
                   Act()]
        if se:
            layers.append(SqueezeExcite(exp, make_divisible(exp // 4), sum_pool=se_sum_pool))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


#: MobileNetV3-Small's first bneck rows: kernel, expansion, out, SE, activation, stride (table 2)
V3_SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
            (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1))


class MobileNetV3(nn.Module):
    def __init__(self, classes: int = 6, width: float = 0.5, last: int = 256, se_sum_pool: bool = False):
        super().__init__()
        cin = make_divisible(16 * width)
        layers = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.Hardswish()]
        for k, exp, out, se, act, s in V3_SMALL:
            exp, out = make_divisible(exp * width), make_divisible(out * width)
            layers.append(InvertedResidual(cin, k, exp, out, se, act, s, se_sum_pool))
            cin = out
        lastconv = 6 * cin
        layers += [nn.Conv2d(cin, lastconv, 1, bias=False), nn.BatchNorm2d(lastconv), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(lastconv, last), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(last, classes))
        for m in self.modules():  # torchvision's MobileNetV3 init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def mobilenet(seed: int, *, se_sum_pool: bool = False, raw_pixels: bool = False) -> dict:
    torch.manual_seed(seed)
    x, y = stripes(256, 32, 6, seed + 1)
    # fault raw_pixels: the uint8 bytes 0..255 as floats, without ToTensor's scaling or Normalize
    x = x * 255 if raw_pixels else normalize(x)
    model = MobileNetV3(se_sum_pool=se_sum_pool)
    return dict(
        model=model, data=batches(x, y, size=32), loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.RMSprop(params, lr=0.002, alpha=0.9, eps=0.0316, momentum=0.9,
                                                     weight_decay=1e-5),
    )


# -- U-Net (Ronneberger et al. 2015) -----------------------------------------------------------------
class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 3, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        self.inc = DoubleConv(channels, widths[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b)) for a, b in zip(widths, widths[1:]))
        self.ups = nn.ModuleList(Up(b, a) for a, b in reversed(list(zip(widths, widths[1:]))))
        self.outc = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def unet(seed: int, *, freeze_head: bool = False) -> dict:
    torch.manual_seed(seed)
    x, mask = shapes(128, 16, seed + 2)
    model = UNet()
    if freeze_head:  # fault: the output conv left frozen at its random init
        model.outc.requires_grad_(False)
    return dict(
        model=model, data=batches(x, mask, size=16), loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
    )


# -- the PyTorch MNIST example ---------------------------------------------------------------------
class Net(nn.Module):
    """pytorch/examples mnist/main.py's Net, verbatim but for a width multiplier (``width=1``: conv32-conv64-fc128)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        c1, c2, h = int(32 * width), int(64 * width), int(128 * width)
        self.conv1 = nn.Conv2d(1, c1, 3, 1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(c2 * 12 * 12, h)
        self.fc2 = nn.Linear(h, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


MNIST_BATCHES = 8


def mnist_cnn(seed: int, *, init: str = "", bias: float = 0.0) -> dict:
    torch.manual_seed(seed)
    x, y = digits(MNIST_BATCHES * 32, seed + 3)
    x = (x - 0.1307) / 0.3081  # transforms.ToTensor() then transforms.Normalize((0.1307,), (0.3081,))
    model = Net(width=0.5)  # half the example's widths, to keep the checklist within seconds on one CPU thread
    if init == "normal":  # fault: every weight drawn from N(0, 1), no fan-in scaling
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=1.0)
    if bias:  # fault: every bias filled with a negative constant
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.constant_(m.bias, bias)
    gamma = 0.7 ** (1 / MNIST_BATCHES)
    return dict(
        model=model, data=batches(x, y, size=32), loss_fn=F.nll_loss,
        optimizer=lambda params: torch.optim.Adadelta(params, lr=1.0),
        step=babysitter.Step(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)),
    )


# -- LeNet-5 (LeCun et al. 1998) -------------------------------------------------------------------
class LeNet5(nn.Module):
    """LeNet-5: C1 conv5x5 6 - tanh - S2 average pool - C3 conv5x5 16 - tanh - S4 average pool - F5 120 - tanh - F6 84
    - tanh - 10 outputs (the RBF output layer replaced by a linear one, as every modern reimplementation does)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                                        nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def lenet(seed: int, *, raw_pixels: bool = False) -> dict:
    torch.manual_seed(seed)
    x, y = digits(256, seed + 4)
    # fault raw_pixels: the uint8 bytes 0..255 as floats, without ToTensor's scaling or Normalize
    x = x * 255 if raw_pixels else (x - 0.1307) / 0.3081
    return dict(
        model=LeNet5(), data=batches(x, y, size=32), loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    )


CASES = [
    Case("resnet", FAMILY, resnet,
         "CIFAR ResNet-8 (He et al. 2015: BasicBlocks conv-BN-ReLU, 1x1 projection shortcuts, global average pool) "
         "on 16px stripe images, 4 classes; SGD momentum 0.9, lr 0.1, weight decay 5e-4, cosine schedule",
         plain_steps=RESNET_STEPS),
    Case("mobilenet", FAMILY, mobilenet,
         "MobileNetV3-Small at width 0.5, first five bneck rows (inverted residuals, depthwise convs, ReLU/hardswish, "
         "squeeze-excite with hardsigmoid) on 32px stripe images, 6 classes; RMSprop as torchvision's recipe "
         "(alpha 0.9, eps 0.0316, momentum 0.9, wd 1e-5), lr 0.064 scaled from batch 1024 to 32: 0.002"),
    Case("unet", FAMILY, unet,
         "U-Net (Ronneberger et al. 2015; padded double convs with BN as milesial/Pytorch-UNet), widths 8-16-32-64, "
         "per-pixel 3-class CrossEntropy on 16px synthetic squares and discs; Adam 1e-3"),
    Case("mnist-cnn", FAMILY, mnist_cnn,
         "the PyTorch MNIST example's Net at half width (conv16-conv32-maxpool-dropout-fc64-dropout-fc10, "
         "log_softmax + nll_loss) on synthetic seven-segment 28x28 digits, Normalize((0.1307,), (0.3081,)); "
         "Adadelta lr 1.0 and StepLR gamma 0.7 per epoch, applied per step as 0.7 ** (1/8) (8 batches an epoch)"),
    Case("lenet5", FAMILY, lenet,
         "LeNet-5 (LeCun et al. 1998: conv6-avgpool-conv16-avgpool-fc120-fc84, tanh, linear output) on synthetic "
         "seven-segment 28x28 digits (padded conv1), MNIST-normalised; CrossEntropy, SGD momentum 0.9, lr 0.01 as "
         "the usual LeNet tutorials"),
]

FAULTS = [
    Fault("resnet-double-softmax", "resnet", "overfit_batch", lambda s: resnet(s, softmax_head=True),
          "softmax at the end of the model before nn.CrossEntropyLoss (which applies log_softmax itself): the loss "
          "cannot approach zero"),
    Fault("resnet-negative-beta", "resnet", "dead_relu", lambda s: resnet(s, bn_beta=-3.0),
          "every BatchNorm's beta (bias) initialised to a negative constant (-3) by a custom init loop: the ReLUs "
          "after them are dead"),
    Fault("mobilenet-se-sum", "mobilenet", "saturation", lambda s: mobilenet(s, se_sum_pool=True),
          "squeeze-excite squeezing with x.sum((2, 3)) instead of the mean: the hardsigmoid gates are driven to their "
          "flat regions"),
    Fault("unet-frozen-head", "unet", "param_updates", lambda s: unet(s, freeze_head=True),
          "the U-Net's output 1x1 conv left with requires_grad=False at its random init (a from-scratch layer "
          "frozen by a fine-tuning recipe's freeze loop)"),
    Fault("lenet5-raw-pixels", "lenet5", "saturation", lambda s: lenet(s, raw_pixels=True),
          "raw pixel values 0..255 as floats (no ToTensor scaling, no Normalize) fed to a tanh network: the tanh units "
          "are saturated"),
    Fault("mobilenet-raw-pixels", "mobilenet", "input_scale", lambda s: mobilenet(s, raw_pixels=True),
          "raw pixel values 0..255 as floats (no ToTensor scaling, no Normalize) fed to the CNN"),
    Fault("mnist-cnn-normal-init", "mnist-cnn", "activation_scale", lambda s: mnist_cnn(s, init="normal"),
          "every conv and linear weight re-initialised with nn.init.normal_(std=1) (no fan-in scaling, no "
          "normalisation): activations explode with depth"),
    Fault("mnist-cnn-negative-bias", "mnist-cnn", "dead_relu", lambda s: mnist_cnn(s, bias=-1.0),
          "every conv and linear bias filled with a negative constant (-1) by a custom init: the ReLUs are dead"),
]
