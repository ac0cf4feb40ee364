"""Face detection (facenet-pytorch MTCNN), embeddings (dlib ResNet), quality and crop geometry."""

# Here rather than in ``faces.align`` (which needs numpy and OpenCV) so that the CLI can use it as
# an option default without importing either: ``hime --help`` stays quick.
TRAIN_HR_SIZE = 128  # HR face crop side the released models were trained on
