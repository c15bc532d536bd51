"""`python -m keras_sam.demo ...`: the demo."""

from keras_sam.demo.noisy_digits import main

main()
