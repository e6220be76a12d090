"""CIELab constants (sRGB, D65). Every normalisation constant of the product is named here once.

Networks take L in [0, 100] and return ab in Lab units; they normalise internally with these.
"""

L_MAX = 100.0  # CIE L* of white
L_CENTER = 50.0  # the network sees (L - L_CENTER) / L_SCALE, in [-1, 1]
L_SCALE = 50.0
AB_SCALE = 110.0  # the decoder's tanh output times AB_SCALE gives a*, b* in Lab units
