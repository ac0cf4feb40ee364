"""Face detection (facenet-pytorch MTCNN), embeddings (dlib ResNet), quality and crop geometry."""
