"""What the published answer sets claim, quoted so that the sheet can show where each goes wrong.

These are the only figures of the answer sheet that cnnlab does not measure: other people's answers and a paper's
own rounded figure, kept as data and labelled as quotations wherever they appear. Each slip is then *reproduced* by a
computation in `cnnlab.tasks.answers.measure`, which is what shows the reader where the arithmetic went wrong.
"""

from __future__ import annotations

# Exercise 2: the parameter count of the three-layer network, as five answer sets give it. 903,400 is right; the
# sheet reproduces each wrong total from the layer spec with the slip applied.
EXERCISE_2_CLAIMS: dict[str, dict[str, object]] = {
    "times_ten": {
        "claim": 9_027_000,
        "slip": "each layer's weights written ten times too large ((3·3·3)·100 as 27,000), biases left out",
    },
    "reversed": {
        "claim": 911_500,
        "slip": "the layers stacked in reverse order (400 maps first, 100 last)",
    },
    "dense_and_misadd": {
        "claim": 8_006_700,
        "slip": "(3·3·100)·200 written as 1,800,000, biases left out, a dense layer the question does not have "
        "added, and the total mis-added",
    },
}

# Exercise 9: the MNIST test accuracy the answer sets report for their CNNs (low and high end, as fractions).
EXERCISE_9_ANSWER_SETS = {"low": 0.988, "high": 0.990}

# Exercise 10: the transfer-learning answer whose preprocessing did not match its pretrained model.
EXERCISE_10_MISMATCHED_ACCURACY = 0.11

# Exercise 6: the 2012 AlexNet paper's own parameter figure (the sheet counts the network it describes).
ALEXNET_2012_PARAMS = {
    "claim": "60 million",
    "source": "Krizhevsky, Sutskever and Hinton, NeurIPS 2012, abstract and section 4",
}
